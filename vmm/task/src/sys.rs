//! The few system calls std does not wrap: process-group signals, waiting without reaping,
//! synchronous signal delivery, AF_VSOCK sockets.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Sends `sig` to every process of group `pgid`.
pub fn killpg(pgid: u32, sig: libc::c_int) -> io::Result<()> {
    let pgid =
        libc::pid_t::try_from(pgid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: killpg takes plain integers and touches no memory of ours.
    check(unsafe { libc::killpg(pgid, sig) }).map(drop)
}

/// Blocks until child `pid` has exited, leaving it a zombie: its pid (and so its process
/// group id) stays taken until the caller reaps it, so signals sent to the group meanwhile
/// cannot reach a stranger that got the number.
pub fn wait_exit_keep_zombie(pid: u32) -> io::Result<()> {
    let id = libc::id_t::from(pid);
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid value for waitid to overwrite.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
        let r = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        match check(r) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A signal set.
pub struct SigSet(libc::sigset_t);

impl SigSet {
    pub fn of(sigs: &[libc::c_int]) -> SigSet {
        // SAFETY: sigset_t is plain data; sigemptyset initializes it before any use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut set) };
        for &s in sigs {
            // SAFETY: as above; an invalid signal number only makes sigaddset fail.
            unsafe { libc::sigaddset(&mut set, s) };
        }
        SigSet(set)
    }

    /// Blocks the set in the calling thread; threads started afterwards inherit the mask, so
    /// call it before starting any, and the signals wait for [`SigSet::wait`].
    pub fn block(&self) -> io::Result<()> {
        // SAFETY: the set is initialized; the old mask is not wanted (null).
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(())
    }

    /// The next pending signal of the set (blocked in every thread).
    pub fn wait(&self) -> io::Result<libc::c_int> {
        let mut sig: libc::c_int = 0;
        // SAFETY: the set is initialized and `sig` is a valid out-pointer.
        let r = unsafe { libc::sigwait(&self.0, &mut sig) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(sig)
    }
}

/// A listening AF_VSOCK stream socket on `port` for any CID (the guest side of the channel).
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket takes plain integers; the result is checked before use.
    let fd =
        check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zeroed is valid (the reserved fields must be 0).
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    use std::os::fd::AsRawFd;
    // SAFETY: addr is a valid sockaddr_vm and the length passed is its size.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    // SAFETY: plain integers on a socket we own.
    check(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
    Ok(fd)
}

/// The next connection on a listening socket (peer address not wanted).
pub fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: null address and length pointers are allowed when the peer is not wanted.
        let r = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        match check(r) {
            // SAFETY: accept4 returned a new descriptor that nobody else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What an open descriptor is, as far as relaying it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    Socket,
    Pipe,
    Other(&'static str),
}

/// The kind of descriptor `fd`; an error when it is not open.
pub fn fd_kind(fd: std::os::fd::RawFd) -> io::Result<FdKind> {
    // SAFETY: stat is plain data; zeroed is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat for the call; a closed fd only makes it fail.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => FdKind::Socket,
        libc::S_IFIFO => FdKind::Pipe,
        libc::S_IFREG => FdKind::Other("a regular file"),
        libc::S_IFCHR => FdKind::Other("a character device"),
        libc::S_IFDIR => FdKind::Other("a directory"),
        _ => FdKind::Other("neither a socket nor a pipe"),
    })
}
