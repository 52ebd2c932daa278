//! The line format a workload prints and the harness parses.
//!
//! Every line the harness reads starts with a tag and is followed by space-separated
//! `key=value` tokens (values never contain spaces); any other line is ignored, so a
//! workload may print human-readable text beside them.
//!
//! ```text
//! HPMMAP-ITER workload=cg i=0 secs=0.01234
//! HPMMAP-DETAIL workload=cg residual=3.1e-11 err_max=2.2e-12 grid=64x64x64
//! HPMMAP-RESULT v=1 workload=cg mode=thp ranks=2 mem_per_rank=268435456 iters=50 figure=secs_per_iter value=0.0123 unit=s valid=1 minflt=0 majflt=0 setup_minflt=65610 setup_majflt=0 total_secs=0.617
//! ```
//!
//! `HPMMAP-ITER`: one per measured iteration, in order; `secs` is the slowest rank's time
//! for that iteration (ranks are barrier-synchronised, so that is the iteration's time).
//! `HPMMAP-RESULT`: exactly one, last. `minflt`/`majflt` are the page faults all ranks took
//! in the measured phase (getrusage, summed over ranks); `setup_*` those taken while
//! allocating and initialising. `valid=1` when the workload's own verification passed.
//! `HPMMAP-DETAIL`: workload-specific figures (verification values, latency percentiles).

use serde::{Deserialize, Serialize};

use crate::memory::AllocMode;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadReport {
    pub workload: String,
    pub mode: AllocMode,
    pub ranks: usize,
    pub mem_per_rank: u64,
    pub figure_name: String,
    pub figure: f64,
    pub unit: String,
    pub valid: bool,
    pub iter_secs: Vec<f64>,
    pub minflt: u64,
    pub majflt: u64,
    pub setup_minflt: u64,
    pub setup_majflt: u64,
    pub detail: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("no HPMMAP-RESULT line in the workload's output")]
    NoResult,
    #[error("line {line}: {what}")]
    Bad { line: usize, what: String },
    #[error("HPMMAP-RESULT says iters={said} but {got} HPMMAP-ITER lines came")]
    IterCount { said: usize, got: usize },
}

impl WorkloadReport {
    pub fn total_secs(&self) -> f64 {
        self.iter_secs.iter().sum()
    }

    pub fn detail(&self, key: &str) -> Option<&str> {
        self.detail
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The lines for this report, in the documented format.
    pub fn to_lines(&self) -> String {
        let mut s = String::new();
        for (i, t) in self.iter_secs.iter().enumerate() {
            s += &format!("HPMMAP-ITER workload={} i={i} secs={t:e}\n", self.workload);
        }
        if !self.detail.is_empty() {
            s += &format!("HPMMAP-DETAIL workload={}", self.workload);
            for (k, v) in &self.detail {
                s += &format!(" {k}={v}");
            }
            s += "\n";
        }
        s += &format!(
            "HPMMAP-RESULT v={FORMAT_VERSION} workload={} mode={} ranks={} mem_per_rank={} iters={} \
             figure={} value={:e} unit={} valid={} minflt={} majflt={} setup_minflt={} \
             setup_majflt={} total_secs={:e}\n",
            self.workload,
            self.mode.name(),
            self.ranks,
            self.mem_per_rank,
            self.iter_secs.len(),
            self.figure_name,
            self.figure,
            self.unit,
            u8::from(self.valid),
            self.minflt,
            self.majflt,
            self.setup_minflt,
            self.setup_majflt,
            self.total_secs(),
        );
        s
    }

    /// Reads a report back from a workload's output.
    pub fn parse(text: &str) -> Result<WorkloadReport, ParseError> {
        let mut iters = Vec::new();
        let mut detail = Vec::new();
        let mut result = None;
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            let mut tokens = line.split_whitespace();
            let tag = tokens.next().unwrap_or("");
            let kv = || -> Result<Vec<(&str, &str)>, ParseError> {
                line.split_whitespace()
                    .skip(1)
                    .map(|t| {
                        t.split_once('=').ok_or_else(|| ParseError::Bad {
                            line: line_no,
                            what: format!("token {t:?} is not key=value"),
                        })
                    })
                    .collect()
            };
            match tag {
                "HPMMAP-ITER" => {
                    let kv = kv()?;
                    let secs = get(&kv, "secs", line_no)?;
                    iters.push(secs);
                }
                "HPMMAP-DETAIL" => {
                    for (k, v) in kv()? {
                        if k != "workload" {
                            detail.push((k.to_string(), v.to_string()));
                        }
                    }
                }
                "HPMMAP-RESULT" => result = Some((line_no, kv()?)),
                _ => {}
            }
        }
        let (line_no, kv) = result.ok_or(ParseError::NoResult)?;
        let text_of = |k: &str| -> Result<String, ParseError> {
            kv.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
                .ok_or_else(|| ParseError::Bad {
                    line: line_no,
                    what: format!("missing {k}="),
                })
        };
        let v: u32 = get(&kv, "v", line_no)?;
        if v != FORMAT_VERSION {
            return Err(ParseError::Bad {
                line: line_no,
                what: format!("format version {v}, this harness reads {FORMAT_VERSION}"),
            });
        }
        let mode_name = text_of("mode")?;
        let mode = AllocMode::from_name(&mode_name).ok_or_else(|| ParseError::Bad {
            line: line_no,
            what: format!("unknown mode {mode_name:?}"),
        })?;
        let said: usize = get(&kv, "iters", line_no)?;
        if said != iters.len() {
            return Err(ParseError::IterCount {
                said,
                got: iters.len(),
            });
        }
        Ok(WorkloadReport {
            workload: text_of("workload")?,
            mode,
            ranks: get(&kv, "ranks", line_no)?,
            mem_per_rank: get(&kv, "mem_per_rank", line_no)?,
            figure_name: text_of("figure")?,
            figure: get(&kv, "value", line_no)?,
            unit: text_of("unit")?,
            valid: get::<u8>(&kv, "valid", line_no)? == 1,
            iter_secs: iters,
            minflt: get(&kv, "minflt", line_no)?,
            majflt: get(&kv, "majflt", line_no)?,
            setup_minflt: get(&kv, "setup_minflt", line_no)?,
            setup_majflt: get(&kv, "setup_majflt", line_no)?,
            detail,
        })
    }
}

fn get<T: std::str::FromStr>(kv: &[(&str, &str)], key: &str, line: usize) -> Result<T, ParseError> {
    let v = kv
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
        .ok_or_else(|| ParseError::Bad {
            line,
            what: format!("missing {key}="),
        })?;
    v.parse().map_err(|_| ParseError::Bad {
        line,
        what: format!("{key}={v} is not a valid value"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WorkloadReport {
        WorkloadReport {
            workload: "cg".into(),
            mode: AllocMode::Hugetlb,
            ranks: 2,
            mem_per_rank: 1 << 28,
            figure_name: "secs_per_iter".into(),
            figure: 0.0125,
            unit: "s".into(),
            valid: true,
            iter_secs: vec![0.0125, 0.013, 0.0121],
            minflt: 3,
            majflt: 0,
            setup_minflt: 1200,
            setup_majflt: 1,
            detail: vec![("residual".into(), "1e-12".into())],
        }
    }

    #[test]
    fn lines_round_trip_and_ignore_other_output() {
        let r = sample();
        let text = format!("some banner\n{}trailing text\n", r.to_lines());
        assert_eq!(WorkloadReport::parse(&text).unwrap(), r);
        assert!((r.total_secs() - 0.0376).abs() < 1e-12);
    }

    #[test]
    fn missing_result_and_wrong_iteration_count_are_errors() {
        assert_eq!(
            WorkloadReport::parse("HPMMAP-ITER workload=cg i=0 secs=1\n"),
            Err(ParseError::NoResult)
        );
        let text = sample().to_lines().replacen("HPMMAP-ITER", "# dropped", 1);
        assert_eq!(
            WorkloadReport::parse(&text),
            Err(ParseError::IterCount { said: 3, got: 2 })
        );
        let bad = sample().to_lines().replace("mode=hugetlb", "mode=huge");
        assert!(matches!(
            WorkloadReport::parse(&bad),
            Err(ParseError::Bad { .. })
        ));
    }
}
