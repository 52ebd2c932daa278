//! Just enough ELF64 reading for image building: is a file static or dynamic, its
//! interpreter, a named section (a module's `.modinfo`), and its notes (the PVH entry).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    #[error("truncated or malformed ELF ({0})")]
    Malformed(&'static str),
}

const PT_INTERP: u32 = 3;
const PT_DYNAMIC: u32 = 2;
const PT_NOTE: u32 = 4;

pub struct Elf<'a> {
    data: &'a [u8],
    e_type: u16,
    phoff: usize,
    phentsize: usize,
    phnum: usize,
    shoff: usize,
    shentsize: usize,
    shnum: usize,
    shstrndx: usize,
}

pub struct Segment {
    pub kind: u32,
    pub offset: usize,
    pub filesz: usize,
}

pub struct Note<'a> {
    pub name: &'a [u8],
    pub kind: u32,
    pub desc: &'a [u8],
}

fn u16_at(d: &[u8], o: usize) -> Result<u16, ElfError> {
    d.get(o..o + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(ElfError::Malformed("header"))
}
fn u32_at(d: &[u8], o: usize) -> Result<u32, ElfError> {
    d.get(o..o + 4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .ok_or(ElfError::Malformed("header"))
}
fn u64_at(d: &[u8], o: usize) -> Result<usize, ElfError> {
    d.get(o..o + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
        .ok_or(ElfError::Malformed("header"))
}

pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

impl<'a> Elf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, ElfError> {
        if !is_elf(data) {
            return Err(ElfError::NotElf);
        }
        if data.len() < 64 || data[4] != 2 || data[5] != 1 {
            return Err(ElfError::NotElf64);
        }
        Ok(Elf {
            data,
            e_type: u16_at(data, 16)?,
            phoff: u64_at(data, 32)?,
            shoff: u64_at(data, 40)?,
            phentsize: u16_at(data, 54)? as usize,
            phnum: u16_at(data, 56)? as usize,
            shentsize: u16_at(data, 58)? as usize,
            shnum: u16_at(data, 60)? as usize,
            shstrndx: u16_at(data, 62)? as usize,
        })
    }

    /// ET_EXEC 2, ET_DYN 3 (PIE or shared object), ET_REL 1 (kernel module).
    pub fn e_type(&self) -> u16 {
        self.e_type
    }

    pub fn segments(&self) -> Result<Vec<Segment>, ElfError> {
        (0..self.phnum)
            .map(|i| {
                let o = self.phoff + i * self.phentsize;
                Ok(Segment {
                    kind: u32_at(self.data, o)?,
                    offset: u64_at(self.data, o + 8)?,
                    filesz: u64_at(self.data, o + 32)?,
                })
            })
            .collect()
    }

    fn segment_bytes(&self, s: &Segment) -> Result<&'a [u8], ElfError> {
        self.data
            .get(s.offset..s.offset + s.filesz)
            .ok_or(ElfError::Malformed("segment past end of file"))
    }

    /// The program interpreter (dynamic loader) a dynamically linked executable names.
    pub fn interpreter(&self) -> Result<Option<String>, ElfError> {
        for s in self.segments()? {
            if s.kind == PT_INTERP {
                let b = self.segment_bytes(&s)?;
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                return Ok(Some(String::from_utf8_lossy(&b[..end]).into_owned()));
            }
        }
        Ok(None)
    }

    /// Static executables have neither an interpreter nor a dynamic segment
    /// (a static-pie has PT_DYNAMIC but no interpreter and needs no libraries).
    pub fn is_static(&self) -> Result<bool, ElfError> {
        let segs = self.segments()?;
        let interp = segs.iter().any(|s| s.kind == PT_INTERP);
        let dynamic = segs.iter().any(|s| s.kind == PT_DYNAMIC);
        Ok(!interp && (!dynamic || self.e_type == 3))
    }

    pub fn notes(&self) -> Result<Vec<Note<'a>>, ElfError> {
        let mut out = Vec::new();
        for s in self.segments()? {
            if s.kind != PT_NOTE {
                continue;
            }
            let b = self.segment_bytes(&s)?;
            let mut o = 0;
            while o + 12 <= b.len() {
                let namesz = u32_at(b, o)? as usize;
                let descsz = u32_at(b, o + 4)? as usize;
                let kind = u32_at(b, o + 8)?;
                let name_at = o + 12;
                let desc_at = name_at + namesz.div_ceil(4) * 4;
                let next = desc_at + descsz.div_ceil(4) * 4;
                let name = b
                    .get(name_at..name_at + namesz)
                    .ok_or(ElfError::Malformed("note"))?;
                let desc = b
                    .get(desc_at..desc_at + descsz)
                    .ok_or(ElfError::Malformed("note"))?;
                let name = name.strip_suffix(&[0]).unwrap_or(name);
                out.push(Note { name, kind, desc });
                o = next;
            }
        }
        Ok(out)
    }

    pub fn section(&self, wanted: &str) -> Result<Option<&'a [u8]>, ElfError> {
        let hdr = |i: usize| -> Result<(usize, usize, usize), ElfError> {
            let o = self.shoff + i * self.shentsize;
            Ok((
                u32_at(self.data, o)? as usize,
                u64_at(self.data, o + 24)?,
                u64_at(self.data, o + 32)?,
            ))
        };
        if self.shnum == 0 || self.shstrndx >= self.shnum {
            return Ok(None);
        }
        let (_, stroff, strsize) = hdr(self.shstrndx)?;
        let strtab = self
            .data
            .get(stroff..stroff + strsize)
            .ok_or(ElfError::Malformed("section names"))?;
        for i in 0..self.shnum {
            let (name_off, off, size) = hdr(i)?;
            let name = strtab.get(name_off..).unwrap_or(&[]);
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            if &name[..end] == wanted.as_bytes() {
                return self
                    .data
                    .get(off..off + size)
                    .map(Some)
                    .ok_or(ElfError::Malformed("section past end of file"));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_elf() {
        assert_eq!(Elf::parse(b"#!/bin/sh\n").err(), Some(ElfError::NotElf));
        assert_eq!(
            Elf::parse(b"\x7fELF\x01\x01").err(),
            Some(ElfError::NotElf64)
        );
    }

    #[test]
    fn reads_host_binaries() {
        // /bin/true is dynamically linked on Debian; busybox-static is static.
        let t = std::fs::read("/bin/true").unwrap();
        let e = Elf::parse(&t).unwrap();
        assert!(!e.is_static().unwrap());
        assert!(e.interpreter().unwrap().unwrap().contains("ld-linux"));
        if let Ok(b) = std::fs::read("/bin/busybox") {
            let e = Elf::parse(&b).unwrap();
            assert!(e.is_static().unwrap());
            assert_eq!(e.interpreter().unwrap(), None);
        }
        assert!(e.section(".text").unwrap().is_some());
        assert!(e.section(".no-such").unwrap().is_none());
    }
}
