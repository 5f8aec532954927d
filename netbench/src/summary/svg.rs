//! Charts as inline SVG, so the HTML report is one self-contained file (no script, no
//! network): grouped bars, and lines on linear or logarithmic axes.

use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 48.0;

/// Distinguishable on white and for most colour vision.
const COLOURS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#17becf", "#bcbd22",
];

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn colour(i: usize) -> &'static str {
    COLOURS[i % COLOURS.len()]
}

fn open(title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12" role="img"><title>{t}</title><rect width="100%" height="100%" fill="white"/><text x="{x}" y="20" font-size="14" font-weight="bold">{t}</text>"#,
        t = escape(title),
        x = LEFT,
    );
    s
}

fn legend(s: &mut String, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 18.0;
        let x = WIDTH - RIGHT + 14.0;
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{y0}" width="12" height="12" fill="{c}"/><text x="{tx}" y="{ty}" class="series">{n}</text>"#,
            y0 = y - 10.0,
            c = colour(i),
            tx = x + 18.0,
            ty = y,
            n = escape(name),
        );
    }
}

/// A "nice" step for about `count` ticks over `span`.
fn nice_step(span: f64, count: f64) -> f64 {
    let raw = (span / count).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Grouped bars: one group per category, one bar per series; `None` draws nothing
/// (a value that was not measured).
pub fn bars(
    title: &str,
    unit: &str,
    categories: &[String],
    series: &[(String, Vec<Option<f64>>)],
) -> String {
    let mut s = open(title);
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let step = nice_step(max.max(1e-9), 5.0);
    let top = (max / step).ceil().max(1.0) * step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h * (1.0 - v / top);
    let mut t = 0.0;
    while t <= top + step / 2.0 {
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{yy}" y2="{yy}" stroke="#ddd"/><text x="{tx}" y="{ty}" text-anchor="end">{l}</text>"##,
            x2 = LEFT + plot_w,
            yy = y(t),
            tx = LEFT - 6.0,
            ty = y(t) + 4.0,
            l = fmt_tick(t),
        );
        t += step;
    }
    let _ = write!(
        s,
        r#"<text x="14" y="{my}" transform="rotate(-90 14 {my})" text-anchor="middle">{u}</text>"#,
        my = TOP + plot_h / 2.0,
        u = escape(unit),
    );
    let groups = categories.len().max(1) as f64;
    let group_w = plot_w / groups;
    let bar_w = (group_w * 0.8) / series.len().max(1) as f64;
    for (g, cat) in categories.iter().enumerate() {
        let gx = LEFT + g as f64 * group_w;
        for (i, (name, values)) in series.iter().enumerate() {
            if let Some(Some(v)) = values.get(g) {
                let x = gx + group_w * 0.1 + i as f64 * bar_w;
                let _ = write!(
                    s,
                    r#"<rect x="{x:.1}" y="{yy:.1}" width="{w:.1}" height="{h:.1}" fill="{c}"><title>{n} {cat}: {v:.3} {u}</title></rect>"#,
                    yy = y(*v),
                    w = bar_w * 0.95,
                    h = (TOP + plot_h - y(*v)).max(0.0),
                    c = colour(i),
                    n = escape(name),
                    cat = escape(cat),
                    u = escape(unit),
                );
            }
        }
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{yy}" text-anchor="middle">{c}</text>"#,
            x = gx + group_w / 2.0,
            yy = TOP + plot_h + 18.0,
            c = escape(cat),
        );
    }
    legend(
        &mut s,
        &series.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
    );
    s.push_str("</svg>");
    s
}

/// An axis: linear, or logarithmic (base 10) for values spanning decades.
#[derive(Debug, Clone, Copy)]
pub enum Scale {
    Linear,
    Log,
}

/// How percentiles are spread on a latency chart's x axis: by "nines", so that 90,
/// 99, 99.9 and 99.99 are equally far apart and the tail gets the room.
pub fn nines(percent: f64) -> f64 {
    -(1.0 - (percent / 100.0).min(0.9999)).log10()
}

/// Lines through `(x, y)` points, one per series. `x_ticks` label the x axis at
/// those (already transformed) positions.
pub struct Lines<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub y_scale: Scale,
    pub x_ticks: Vec<(f64, String)>,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Series come in pairs (a baseline and its variant): each pair shares a colour,
    /// the second of the pair dashed.
    pub paired: bool,
}

impl Lines<'_> {
    fn style(&self, i: usize) -> (&'static str, &'static str) {
        if self.paired {
            (colour(i / 2), if i % 2 == 1 { "6 4" } else { "none" })
        } else {
            (colour(i), "none")
        }
    }

    pub fn render(&self) -> String {
        let mut s = open(self.title);
        let pts = || self.series.iter().flat_map(|(_, p)| p.iter());
        let finite = |v: &f64| v.is_finite();
        let (mut x0, mut x1) = pts()
            .map(|p| p.0)
            .filter(finite)
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        for (t, _) in &self.x_ticks {
            x0 = x0.min(*t);
            x1 = x1.max(*t);
        }
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        let ys: Vec<f64> = pts()
            .map(|p| p.1)
            .filter(|y| y.is_finite() && (matches!(self.y_scale, Scale::Linear) || *y > 0.0))
            .collect();
        let (ymin, ymax) = ys
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
        let (ymin, ymax) = if ys.is_empty() {
            (1.0, 10.0)
        } else {
            (ymin, ymax)
        };
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        // The y range and the ticks on it.
        let (lo, hi, ticks): (f64, f64, Vec<f64>) = match self.y_scale {
            Scale::Log => {
                let lo = ymin.log10().floor();
                let hi = ymax.log10().ceil().max(lo + 1.0);
                let ticks = (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect();
                (lo, hi, ticks)
            }
            Scale::Linear => {
                let step = nice_step((ymax - ymin.min(0.0)).max(1e-9), 5.0);
                let lo = (ymin.min(0.0) / step).floor() * step;
                let hi = ((ymax / step).ceil() * step).max(lo + step);
                let n = ((hi - lo) / step).round() as usize;
                (lo, hi, (0..=n).map(|i| lo + i as f64 * step).collect())
            }
        };
        let ty = |v: f64| match self.y_scale {
            Scale::Log => v.max(f64::MIN_POSITIVE).log10(),
            Scale::Linear => v,
        };
        let py = |v: f64| TOP + plot_h * (1.0 - (ty(v) - lo) / (hi - lo));
        let px = |x: f64| LEFT + plot_w * (x - x0) / (x1 - x0);
        for t in &ticks {
            let _ = write!(
                s,
                r##"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{tx}" y="{yl:.1}" text-anchor="end">{l}</text>"##,
                x2 = LEFT + plot_w,
                y = py(*t),
                tx = LEFT - 6.0,
                yl = py(*t) + 4.0,
                l = fmt_tick(*t),
            );
        }
        for (t, label) in &self.x_ticks {
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{y2}" stroke="#eee"/><text x="{x:.1}" y="{yl}" text-anchor="middle">{l}</text>"##,
                x = px(*t),
                y2 = TOP + plot_h,
                yl = TOP + plot_h + 16.0,
                l = escape(label),
            );
        }
        let _ = write!(
            s,
            r#"<text x="{mx}" y="{yy}" text-anchor="middle">{xl}</text><text x="14" y="{my}" transform="rotate(-90 14 {my})" text-anchor="middle">{yl}</text>"#,
            mx = LEFT + plot_w / 2.0,
            yy = HEIGHT - 8.0,
            xl = escape(self.x_label),
            my = TOP + plot_h / 2.0,
            yl = escape(self.y_label),
        );
        for (i, (name, points)) in self.series.iter().enumerate() {
            let path: Vec<String> = points
                .iter()
                .filter(|(x, y)| {
                    x.is_finite()
                        && y.is_finite()
                        && (matches!(self.y_scale, Scale::Linear) || *y > 0.0)
                })
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            if path.is_empty() {
                continue;
            }
            let (c, dash) = self.style(i);
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2" stroke-dasharray="{dash}" points="{p}"><title>{n}</title></polyline>"#,
                p = path.join(" "),
                n = escape(name),
            );
            if path.len() <= 12 {
                for point in &path {
                    let (x, y) = point.split_once(',').unwrap_or(("0", "0"));
                    let _ = write!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{c}"/>"#);
                }
            }
        }
        for (i, (name, _)) in self.series.iter().enumerate() {
            let (c, dash) = self.style(i);
            let y = TOP + 10.0 + i as f64 * 18.0;
            let x = WIDTH - RIGHT + 14.0;
            let _ = write!(
                s,
                r#"<line x1="{x}" x2="{x2}" y1="{ym}" y2="{ym}" stroke="{c}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{tx}" y="{y}" class="series">{n}</text>"#,
                x2 = x + 14.0,
                ym = y - 4.0,
                tx = x + 18.0,
                n = escape(name),
            );
        }
        s.push_str("</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_draw_one_rect_per_measured_value_and_skip_the_rest() {
        let svg = bars(
            "t",
            "Gbit/s",
            &["a".into(), "b".into()],
            &[
                ("up".into(), vec![Some(1.0), None]),
                ("down".into(), vec![Some(2.0), Some(0.5)]),
            ],
        );
        assert_eq!(svg.matches("<rect x=").count() - 2, 3, "{svg}");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn lines_escape_names_and_nines_spread_the_tail() {
        let svg = Lines {
            title: "a < b",
            x_label: "x",
            y_label: "y",
            y_scale: Scale::Log,
            x_ticks: vec![(nines(50.0), "p50".into())],
            series: vec![(
                "s & t".into(),
                vec![(nines(50.0), 10.0), (nines(99.0), 100.0)],
            )],
            paired: true,
        }
        .render();
        assert!(svg.contains("a &lt; b") && svg.contains("s &amp; t"));
        assert!(svg.contains("<polyline"));
        assert!((nines(90.0) - 1.0).abs() < 1e-9 && (nines(99.9) - 3.0).abs() < 1e-9);
    }
}
