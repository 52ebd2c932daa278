//! GUPS, the HPCC RandomAccess kernel: XOR pseudo-random 64-bit values into a table of
//! 2^k words (`table[ran & (size-1)] ^= ran`), 4 × size updates per rank, from HPCC's
//! primitive-polynomial generator. Each rank has its own table (weak scaling) and its own
//! stretch of the random stream. Verification is HPCC's: replaying the same updates
//! restores the table (XOR is its own inverse); at most 1 % of entries may differ.

use anyhow::Result;

use super::rank::{measured_loop, FaultMeter, RankCtx};
use crate::memory::Buf;

const POLY: u64 = 0x0000_0000_0000_0007;
const PERIOD: i64 = 1_317_624_576_693_539_401;

/// The generator's step.
#[inline]
pub fn next(ran: u64) -> u64 {
    (ran << 1) ^ (if (ran as i64) < 0 { POLY } else { 0 })
}

/// The n-th value of the stream that starts at 1, in O(log n) (HPCC's `starts`): powers
/// of x modulo the polynomial, squared and multiplied as 64×64 GF(2) products.
pub fn starts(n: i64) -> u64 {
    let mut n = n;
    while n < 0 {
        n += PERIOD;
    }
    while n > PERIOD {
        n -= PERIOD;
    }
    if n == 0 {
        return 1;
    }
    let mut m2 = [0u64; 64];
    let mut temp = 1u64;
    for m in m2.iter_mut() {
        *m = temp;
        temp = next(next(temp));
    }
    let mut i = 62i32;
    while i >= 0 && (n >> i) & 1 == 0 {
        i -= 1;
    }
    let mut ran = 2u64;
    while i > 0 {
        let mut t = 0u64;
        for (j, m) in m2.iter().enumerate() {
            if (ran >> j) & 1 == 1 {
                t ^= m;
            }
        }
        ran = t;
        i -= 1;
        if (n >> i) & 1 == 1 {
            ran = next(ran);
        }
    }
    ran
}

/// HPCC's acceptance rule.
pub fn verification_passed(errors: u64, entries: u64) -> bool {
    entries > 0 && errors as f64 <= 0.01 * entries as f64
}

fn update(table: &mut [u64], ran: &mut u64, count: u64) {
    let mask = table.len() as u64 - 1;
    for _ in 0..count {
        *ran = next(*ran);
        table[(*ran & mask) as usize] ^= *ran;
    }
}

pub fn rank_main(ctx: &RankCtx) -> Result<()> {
    let words = ctx.p.mem_per_rank / 8;
    let size = 1u64 << (63 - words.leading_zeros());
    let updates = 4 * size;
    let iters = ctx.p.iters as u64;
    let setup = FaultMeter::start();
    let mut table: Buf<u64> = Buf::new(size as usize, ctx.p.mode)?;
    for (i, t) in table.iter_mut().enumerate() {
        *t = i as u64;
    }
    let start = starts((ctx.rank as u64 * updates) as i64);
    let mut ran = start;
    measured_loop(ctx, &setup, |i| {
        let i = i as u64;
        let chunk = updates * (i + 1) / iters - updates * i / iters;
        update(&mut table, &mut ran, chunk);
        Ok(true)
    })?;
    let mut ran = start;
    update(&mut table, &mut ran, updates);
    let errors = table
        .iter()
        .enumerate()
        .filter(|&(i, &v)| v != i as u64)
        .count();
    ctx.out().metrics[..3].copy_from_slice(&[updates as f64, errors as f64, size as f64]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_jumps_to_the_nth_step_of_the_stream() {
        let mut ran = 1u64;
        for n in 0..300i64 {
            assert_eq!(starts(n), ran, "n = {n}");
            ran = next(ran);
        }
    }

    #[test]
    fn replay_restores_the_table_and_a_corrupted_one_fails() {
        let mut t: Vec<u64> = (0..1024).collect();
        let mut r = starts(5);
        update(&mut t, &mut r, 4096);
        assert!(t.iter().enumerate().any(|(i, &v)| v != i as u64));
        let mut r = starts(5);
        update(&mut t, &mut r, 4096);
        assert!(t.iter().enumerate().all(|(i, &v)| v == i as u64));
        assert!(verification_passed(10, 1024));
        assert!(!verification_passed(11, 1024));
    }
}
