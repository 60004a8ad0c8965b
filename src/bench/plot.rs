//! The context sweep as an SVG line chart (`--plot`).

use super::{ContextResult, ModelResult};

/// A line chart of decode (solid) and prefill (dashed) tok/s against context
/// length, one colour per model, log-scaled context axis.
pub fn svg_plot(results: &[ModelResult]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 200.0, 30.0, 50.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let points: Vec<(f64, f64)> = results
        .iter()
        .flat_map(|r| {
            r.contexts.iter().flat_map(|c| {
                [
                    (c.prompt_tokens as f64, c.decode_tokens_per_sec.median),
                    (c.prompt_tokens as f64, c.prefill_tokens_per_sec.median),
                ]
            })
        })
        .collect();
    let xmin = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min).max(1.0);
    let xmax = points.iter().map(|p| p.0).fold(1.0, f64::max).max(xmin * 2.0);
    let ymax = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let x = |v: f64| left + (v.ln() - xmin.ln()) / (xmax.ln() - xmin.ln()) * pw;
    let y = |v: f64| top + ph - v / ymax * ph;
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">tokens/s vs context (solid: decode, dashed: prefill)</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        top + ph,
        left + pw,
        top + ph,
        top + ph
    );
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            left - 6.0,
            y(v) + 4.0
        );
    }
    let mut ticks: Vec<usize> = results
        .iter()
        .flat_map(|r| r.contexts.iter().map(|c| c.prompt_tokens))
        .collect();
    ticks.sort_unstable();
    ticks.dedup();
    for t in ticks {
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t}</text>\n",
            x(t as f64),
            top + ph + 16.0
        );
    }
    s += &format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">context (tokens)</text>\n",
        left + pw / 2.0,
        h - 10.0
    );
    for (i, r) in results.iter().enumerate() {
        let colour = colours[i % colours.len()];
        for (dash, get) in [
            (
                "",
                (|c: &ContextResult| c.decode_tokens_per_sec.median) as fn(&ContextResult) -> f64,
            ),
            (" stroke-dasharray=\"5,4\"", |c: &ContextResult| {
                c.prefill_tokens_per_sec.median
            }),
        ] {
            let pts: Vec<String> = r
                .contexts
                .iter()
                .map(|c| format!("{:.1},{:.1}", x(c.prompt_tokens as f64), y(get(c))))
                .collect();
            s += &format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n",
                pts.join(" ")
            );
            for p in &pts {
                let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
                s += &format!("<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{colour}\"/>\n");
            }
        }
        s += &format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>\n",
            left + pw + 10.0,
            top + 16.0 * (i as f64 + 1.0),
            xml_escape(&r.model)
        );
    }
    s + "</svg>\n"
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
