//! Placeholder; filled in by issue 7 (PCI host bridge and VFIO device).
