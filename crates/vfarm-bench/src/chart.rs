//! The grouped bar chart: one group per workload, one bar per driver, each bar the driver's
//! performance relative to native (native = 1), labelled with its value. SVG through plotters'
//! SVG backend, which writes `<text>` elements itself, so no system fonts are needed.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;
use crate::BenchError;

/// Bar colours per driver position (native first).
const COLOURS: [RGBColor; 5] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb2),
    RGBColor(0xcc, 0xb9, 0x74),
];

/// Write the chart of `report` to `path` (SVG).
pub fn write_svg(report: &Report, path: &Path) -> Result<(), BenchError> {
    let fail = |e: &dyn std::fmt::Display| BenchError::Chart {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    // Rows that can be drawn: native (1.0 by definition) and every row compared with it.
    let workloads: Vec<String> = report
        .workloads()
        .into_iter()
        .filter(|w| {
            report
                .results
                .iter()
                .any(|r| &r.workload == w && r.relative.is_some())
        })
        .collect();
    if workloads.is_empty() {
        return Err(BenchError::NothingToChart);
    }
    let drivers = &report.drivers;
    let value = |w: &str, d: &str| -> Option<f64> {
        let r = report
            .results
            .iter()
            .find(|r| r.workload == w && r.driver == d)?;
        if d == "native" {
            r.stats.as_ref().map(|_| 1.0)
        } else {
            r.relative
        }
    };
    let top = workloads
        .iter()
        .flat_map(|w| drivers.iter().filter_map(|d| value(w, &d.name)))
        .fold(1.0f64, f64::max)
        // Headroom for the value labels and the legend.
        * 1.35;

    let width = (160 * workloads.len() as u32).max(640) + 120;
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let title =
        "vfarm bench overhead: performance relative to native (1 = native, higher is better)";
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..workloads.len() as f64, 0f64..top)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("relative to native")
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()
        .map_err(|e| fail(&e))?;

    let n = drivers.len().max(1) as f64;
    let group = 0.8; // fraction of each slot the bars of a group fill
    let bar = group / n;
    for (di, d) in drivers.iter().enumerate() {
        let colour = COLOURS[di % COLOURS.len()];
        let label = d.label();
        let mut bars = Vec::new();
        let mut texts = Vec::new();
        for (wi, w) in workloads.iter().enumerate() {
            let Some(v) = value(w, &d.name) else { continue };
            let x0 = wi as f64 + (1.0 - group) / 2.0 + di as f64 * bar;
            bars.push(Rectangle::new(
                [(x0, 0.0), (x0 + bar * 0.92, v)],
                colour.filled(),
            ));
            texts.push(Text::new(
                format!("{v:.2}"),
                (x0, v + top * 0.01),
                ("sans-serif", 11).into_font().color(&BLACK),
            ));
        }
        chart
            .draw_series(bars)
            .map_err(|e| fail(&e))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
        chart.draw_series(texts).map_err(|e| fail(&e))?;
    }
    // Native's reference line.
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (workloads.len() as f64, 1.0)],
            BLACK.mix(0.4),
        )))
        .map_err(|e| fail(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| fail(&e))?;
    // Workload names under their groups, placed in pixels so they sit centred below the axis.
    for (wi, w) in workloads.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(wi as f64 + 0.5, 0.0));
        let style = TextStyle::from(("sans-serif", 14).into_font()).pos(
            plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Top,
            ),
        );
        root.draw(&Text::new(w.clone(), (px, py + 8), style))
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DriverRun, Row};

    fn report() -> Report {
        let drv = |n: &str, a: Option<&str>| DriverRun {
            name: n.into(),
            accelerator: a.map(String::from),
            repeat: 3,
            ..Default::default()
        };
        let row = |w: &str, d: &str, s: &[f64]| Row {
            workload: w.into(),
            driver: d.into(),
            unit: "events/s".into(),
            higher_is_better: true,
            samples: s.to_vec(),
            ..Default::default()
        };
        let mut r = Report {
            drivers: vec![
                drv("native", None),
                drv("oci", None),
                drv("qemu", Some("tcg")),
            ],
            results: vec![
                row("cpu", "native", &[100.0, 101.0]),
                row("cpu", "oci", &[99.0, 98.0]),
                row("cpu", "qemu", &[8.0, 9.0]),
                row("mmu", "native", &[1000.0]),
                row("mmu", "oci", &[900.0]),
                row("net", "native", &[5.0]),
            ],
            ..Default::default()
        };
        r.finish();
        r
    }

    #[test]
    fn writes_well_formed_svg_naming_drivers_and_workloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        write_svg(&report(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.trim_start().starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for s in ["native", "oci", "qemu (TCG)", "cpu", "mmu", "0.98"] {
            assert!(svg.contains(s), "{s} missing");
        }
        // `net` has no comparison with another driver: not charted.
        assert!(!svg.contains(">net<"));
    }

    #[test]
    fn nothing_to_chart_and_unwritable_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = report();
        r.results.retain(|x| x.driver == "native");
        assert_eq!(
            write_svg(&r, &dir.path().join("x.svg"))
                .unwrap_err()
                .code()
                .as_str(),
            "nothing_to_chart"
        );
        let e = write_svg(&report(), Path::new("/nonexistent/dir/c.svg")).unwrap_err();
        assert_eq!(e.code().as_str(), "chart_failed");
        assert!(e.to_string().contains("/nonexistent/dir/c.svg"), "{e}");
    }
}
