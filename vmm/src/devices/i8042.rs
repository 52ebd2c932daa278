//! Just enough of the i8042 keyboard controller for a guest to reset the machine, which this
//! VMM treats as power-off (Linux `reboot=k`, and the fallback of `reboot -f`).

use super::{VmEvent, I8042_COMMAND};

const CMD_RESET_CPU: u8 = 0xFE;

#[derive(Debug, Default)]
pub struct I8042 {
    last_command: u8,
}

impl I8042 {
    pub fn read(&mut self, _port: u16) -> u8 {
        // Status and data both 0: output buffer empty, input buffer empty, no keyboard data.
        0
    }

    pub fn write(&mut self, port: u16, value: u8) -> Option<VmEvent> {
        if port == I8042_COMMAND {
            self.last_command = value;
            if value == CMD_RESET_CPU {
                return Some(VmEvent::GuestShutdown("i8042 reset".into()));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_is_shutdown_and_nothing_else_is() {
        let mut k = I8042::default();
        for v in 0..=255u8 {
            let e = k.write(I8042_COMMAND, v);
            assert_eq!(e.is_some(), v == 0xFE, "{v:#x}");
            assert!(k.write(0x60, v).is_none());
        }
        assert_eq!(k.read(0x64), 0);
    }
}
