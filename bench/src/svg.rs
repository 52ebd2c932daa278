//! The plot: per workload, runtime (mean with ±1 sd error bars) of every configuration
//! under each profile, bars grouped by profile, like the paper's Fig. 8. Rows from the
//! nested lab get panels of their own that plot measured-phase page faults, never their
//! emulated times.

use crate::config::{Config, Place, LAB_LABEL};
use crate::model::Profile;
use crate::table::{Results, Row};
use crate::workloads::Workload;

const W: f64 = 760.0;
const PANEL_H: f64 = 260.0;
const TOP: f64 = 78.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const COLORS: [&str; 6] = [
    "#d95f02", "#1b9e77", "#7570b3", "#666666", "#e7298a", "#1f78b4",
];

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round tick step giving about five ticks up to `max`.
pub fn tick_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// A tick value with as many decimals as the step needs.
pub fn tick_label(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

fn color(c: Config) -> &'static str {
    COLORS[Config::ALL.iter().position(|x| *x == c).unwrap_or(3)]
}

pub fn plot(r: &Results) -> String {
    let is_lab = |x: &Row| x.place == Place::Lab;
    let native_w: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| r.rows.iter().any(|x| x.workload == *w && !is_lab(x)))
        .collect();
    let lab_w: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| r.rows.iter().any(|x| x.workload == *w && is_lab(x)))
        .collect();
    let configs: Vec<Config> = Config::ALL
        .into_iter()
        .filter(|c| r.rows.iter().any(|x| x.config == *c))
        .collect();
    let profiles: Vec<Profile> = Profile::ALL
        .into_iter()
        .filter(|p| r.rows.iter().any(|x| x.profile == *p))
        .collect();
    let panels = native_w.len() + lab_w.len();
    let h = TOP + PANEL_H * panels.max(1) as f64 + 20.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" font-family=\"sans-serif\">\n"
    );
    s += &format!("<rect width=\"{W}\" height=\"{h}\" fill=\"white\"/>\n");
    let title = if native_w.is_empty() && !lab_w.is_empty() {
        "hpmmap isolation benchmark, VM rows (nested lab): measured-phase faults per run"
    } else {
        "hpmmap isolation benchmark: runtime (mean ± sd) per configuration and profile"
    };
    s += &format!(
        "<text x=\"10\" y=\"20\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    );
    let plat = r.header.platform.line();
    let (p1, p2) = split_line(&plat, 125);
    s += &format!(
        "<text x=\"10\" y=\"37\" font-size=\"10\">{}</text>\n",
        escape(&p1)
    );
    s += &format!(
        "<text x=\"10\" y=\"50\" font-size=\"10\">{}</text>\n",
        escape(&p2)
    );
    let mut lx = LEFT;
    for c in &configs {
        s += &format!(
            "<rect x=\"{lx}\" y=\"58\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"68\" font-size=\"11\">{}</text>\n",
            color(*c),
            lx + 16.0,
            c.name()
        );
        lx += if c.is_vm() { 100.0 } else { 90.0 };
    }
    if let (Some(why), true) = (&r.header.vm_rows_absent, lab_w.is_empty()) {
        let short = if why.contains("kvm_pvm") {
            "VM rows absent: host KVM is kvm_pvm (cannot boot Linux)"
        } else {
            "VM rows absent (see table)"
        };
        s += &format!(
            "<text x=\"{lx}\" y=\"68\" font-size=\"10\" fill=\"#a00\">{}</text>\n",
            escape(short)
        );
    }
    for (i, w) in native_w.iter().enumerate() {
        let y0 = TOP + PANEL_H * i as f64;
        s += &panel(r, *w, &configs, &profiles, y0, false);
    }
    for (i, w) in lab_w.iter().enumerate() {
        let y0 = TOP + PANEL_H * (native_w.len() + i) as f64;
        s += &panel(r, *w, &configs, &profiles, y0, true);
    }
    s += "</svg>\n";
    s
}

fn split_line(text: &str, max: usize) -> (String, String) {
    if text.chars().count() <= max {
        return (text.to_string(), String::new());
    }
    let cut = text
        .char_indices()
        .take_while(|(i, _)| *i < max)
        .filter(|(_, c)| *c == ' ')
        .map(|(i, _)| i)
        .last()
        .unwrap_or(max.min(text.len()));
    (
        text[..cut].to_string(),
        text[cut..].trim_start().to_string(),
    )
}

/// (bar height, error-bar half width) of a row: runtime mean ± sd, or for lab rows the
/// measured-phase faults per run (no error bar: the max is in the table).
fn bar_value(row: &Row, lab: bool) -> Option<(f64, f64)> {
    if lab {
        (row.runs > row.runs_failed).then_some((row.faults_mean, 0.0))
    } else {
        row.runtime.map(|s| (s.mean, s.stdev))
    }
}

fn panel(
    r: &Results,
    w: Workload,
    configs: &[Config],
    profiles: &[Profile],
    y0: f64,
    lab: bool,
) -> String {
    let plot_top = y0 + 24.0;
    let plot_h = PANEL_H - 64.0;
    let plot_w = W - LEFT - RIGHT;
    let rows: Vec<&Row> = r
        .rows
        .iter()
        .filter(|x| x.workload == w && (x.place == Place::Lab) == lab)
        .collect();
    let configs: Vec<Config> = configs
        .iter()
        .copied()
        .filter(|c| rows.iter().any(|x| x.config == *c))
        .collect();
    let ymax = rows
        .iter()
        .filter_map(|x| bar_value(x, lab).map(|(m, sd)| m + sd))
        .fold(0.0, f64::max);
    let step = tick_step(ymax * 1.05);
    let top = (ymax * 1.05 / step).ceil().max(1.0) * step;
    let y = |v: f64| plot_top + plot_h - v / top * plot_h;
    let heading = if lab {
        format!("{} — {LAB_LABEL}", w.name())
    } else {
        w.name().to_string()
    };
    let mut s = format!(
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"13\" font-weight=\"bold\"{}>{}</text>\n",
        y0 + 16.0,
        if lab { " fill=\"#a00\"" } else { "" },
        escape(&heading)
    );
    // Axes and grid.
    let mut t = 0.0;
    while t <= top + step * 0.01 {
        let yy = y(t);
        s += &format!(
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>\n",
            LEFT + plot_w,
            LEFT - 5.0,
            yy + 3.5,
            tick_label(t, step)
        );
        t += step;
    }
    s += &format!(
        "<line x1=\"{LEFT}\" y1=\"{plot_top}\" x2=\"{LEFT}\" y2=\"{:.1}\" stroke=\"black\"/>\n",
        plot_top + plot_h
    );
    s += &format!(
        "<text x=\"16\" y=\"{:.1}\" font-size=\"11\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">{}</text>\n",
        plot_top + plot_h / 2.0,
        plot_top + plot_h / 2.0,
        if lab { "faults / run (measured phase)" } else { "runtime (s)" }
    );
    let group_w = plot_w / profiles.len().max(1) as f64;
    let bar_w = (group_w * 0.7 / configs.len().max(1) as f64).min(60.0);
    for (gi, p) in profiles.iter().enumerate() {
        let gx = LEFT + group_w * gi as f64;
        let inner = bar_w * configs.len() as f64;
        let start = gx + (group_w - inner) / 2.0;
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n",
            gx + group_w / 2.0,
            plot_top + plot_h + 16.0,
            match (p, lab) {
                (Profile::Iso, _) => "isolated",
                (Profile::A, false) => "profile A (1 build)",
                (Profile::B, false) => "profile B (2 builds + stress-ng)",
                (Profile::A, true) => "profile A (stress-ng mmap in L1)",
                (Profile::B, true) => "profile B (stress-ng mmap + vm in L1)",
            }
        );
        for (ci, c) in configs.iter().enumerate() {
            let Some(row) = rows.iter().find(|x| x.profile == *p && x.config == *c) else {
                continue;
            };
            let x = start + bar_w * ci as f64;
            let Some((mean, sd)) = bar_value(row, lab) else {
                // No successful run: say so where the bar would be.
                s += &format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\" fill=\"#a00\">failed</text>\n",
                    x + bar_w / 2.0,
                    plot_top + plot_h - 3.0
                );
                continue;
            };
            let top_y = y(mean);
            let what =
                if lab {
                    format!(
                    "{mean:.0} measured-phase faults per run (max {}), {} (emulated; not speed)",
                    row.faults_max,
                    if row.all_valid { "verified" } else { "NOT verified" }
                )
                } else {
                    format!("{mean:.3} ± {sd:.3} s")
                };
            s += &format!(
                "<rect x=\"{:.1}\" y=\"{top_y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {} {}: {}</title></rect>\n",
                x + 1.0,
                bar_w - 2.0,
                plot_top + plot_h - top_y,
                color(*c),
                w.name(),
                c.name(),
                p.name(),
                escape(&what)
            );
            let cx = x + bar_w / 2.0;
            if lab {
                // The count itself over the bar: a zero bar has no height to see.
                s += &format!(
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}{}</text>\n",
                    top_y - 3.0,
                    if mean.fract() == 0.0 {
                        format!("{mean:.0}")
                    } else {
                        format!("{mean:.1}")
                    },
                    if row.all_valid { "" } else { " ✗" }
                );
                continue;
            }
            let (lo, hi) = (y((mean - sd).max(0.0)), y(mean + sd));
            s += &format!(
                "<line x1=\"{cx:.1}\" y1=\"{lo:.1}\" x2=\"{cx:.1}\" y2=\"{hi:.1}\" stroke=\"black\"/><line x1=\"{:.1}\" y1=\"{hi:.1}\" x2=\"{:.1}\" y2=\"{hi:.1}\" stroke=\"black\"/><line x1=\"{:.1}\" y1=\"{lo:.1}\" x2=\"{:.1}\" y2=\"{lo:.1}\" stroke=\"black\"/>\n",
                cx - 4.0,
                cx + 4.0,
                cx - 4.0,
                cx + 4.0
            );
            if let Some(sd) = row.slowdown.filter(|_| *p != Profile::Iso) {
                s += &format!(
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">×{sd:.2}</text>\n",
                    hi - 3.0
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(10.0), 2.0);
        assert_eq!(tick_step(0.7), 0.2);
        assert_eq!(tick_step(4.0), 1.0);
        assert_eq!(tick_step(0.0), 1.0);
        assert_eq!(tick_label(10.0, 2.0), "10");
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(0.05, 0.05), "0.05");
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
