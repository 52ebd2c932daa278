//! The job user, from the guest's /etc/passwd (the images make one, images/src/jobtree.rs).
//! Read directly rather than through getpwnam: the agent is a static binary, where glibc's
//! NSS cannot load its modules.

use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

#[derive(Debug, Error)]
pub enum UserError {
    #[error("{0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("no user {name:?} in {file}")]
    Missing { name: String, file: PathBuf },
    #[error("{file}: bad entry for {name:?}")]
    Bad { name: String, file: PathBuf },
}

/// `name`'s entry of a passwd file.
pub fn lookup(name: &str, passwd: &Path) -> Result<User, UserError> {
    let text =
        std::fs::read_to_string(passwd).map_err(|e| UserError::Read(passwd.to_path_buf(), e))?;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.first() != Some(&name) {
            continue;
        }
        let bad = || UserError::Bad {
            name: name.to_string(),
            file: passwd.to_path_buf(),
        };
        if f.len() < 7 {
            return Err(bad());
        }
        let home = if f[5].starts_with('/') {
            f[5]
        } else {
            crate::envlist::FALLBACK_HOME
        };
        return Ok(User {
            name: name.to_string(),
            uid: f[2].parse().map_err(|_| bad())?,
            gid: f[3].parse().map_err(|_| bad())?,
            home: PathBuf::from(home),
        });
    }
    Err(UserError::Missing {
        name: name.to_string(),
        file: passwd.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_user_is_found_and_bad_entries_are_named() {
        let dir = std::env::temp_dir().join(format!("hpmmap-task-user-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("passwd");
        std::fs::write(
            &p,
            "root:x:0:0:root:/root:/bin/sh\nhpmmap:x:4242:4242::/home/hpmmap:/bin/sh\n\
             nohome:x:5:6:::/bin/sh\nbroken:x:zz:1::/:/bin/sh\nshort:x:1\n",
        )
        .unwrap();
        let u = lookup("hpmmap", &p).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 4242));
        assert_eq!(u.home, PathBuf::from("/home/hpmmap"));
        assert_eq!(lookup("nohome", &p).unwrap().home, PathBuf::from("/"));
        for (who, want) in [
            ("broken", "bad entry"),
            ("short", "bad entry"),
            ("hpmma", "no user"),
        ] {
            let e = lookup(who, &p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(who), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
