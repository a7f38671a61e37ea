//! Tests of `sahara attribute`: steps, resuming, plots, bad inputs.

mod common;

use common::{fails, ok, ok_both, queries, text_file, Fixture};
use serde_json::Value;

#[test]
fn attribute_writes_steps_resumes_and_plots() {
    let fx = Fixture::new();
    let data = text_file(&fx, "q.txt", &queries(4, 5));
    let out = fx.path("a.json");
    let plot = fx.path("a.svg");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ];
    let table = ok(fx.attribute(&args));
    assert!(table.contains("step"), "{table}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for k in [
        "model", "data", "queries", "template", "target", "mode", "epsilon", "rank", "selected",
        "steps",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    // The step-1 winner is null in step 2's grid, and is the maximum of step 1's.
    let first = &steps[0];
    let (l, h) = (
        first["selected"][0].as_u64().unwrap() as usize,
        first["selected"][1].as_u64().unwrap() as usize,
    );
    assert!(steps[1]["scores"][l][h].is_null());
    let best = first["scores"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().filter_map(Value::as_f64))
        .fold(f64::MIN, f64::max);
    assert_eq!(first["score"].as_f64().unwrap(), best);
    assert!(std::fs::read_to_string(&plot).unwrap().contains("<svg"));
    // Rerun with more steps resumes: the first two steps are kept as they were.
    let more = [
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "3",
        "--out",
        out.to_str().unwrap(),
    ];
    let (_, err) = ok_both(fx.attribute(&more));
    let _ = err;
    let v3: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v3["steps"][0], v["steps"][0]);
    assert_eq!(v3["steps"][1], v["steps"][1]);
    assert_eq!(v3["steps"].as_array().unwrap().len(), 3);
    // Other settings are refused.
    fails(
        fx.attribute(&[
            "--data",
            data.to_str().unwrap(),
            "--steps",
            "3",
            "--rank",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]),
        &["other settings"],
    );
}

#[test]
fn attribute_bad_inputs() {
    let fx = Fixture::new();
    let one = text_file(&fx, "one.txt", &queries(1, 5));
    let three = text_file(&fx, "three.txt", &queries(3, 5));
    fails(
        fx.attribute(&["--data", one.to_str().unwrap()]),
        &["at least 2 queries"],
    );
    fails(
        fx.attribute(&["--data", three.to_str().unwrap(), "--rank", "4"]),
        &["--rank 4"],
    );
    fails(
        fx.attribute(&["--data", three.to_str().unwrap(), "--steps", "13"]),
        &["--steps 13"],
    );
    fails(
        fx.attribute(&["--data", three.to_str().unwrap(), "--plot", "x.gif"]),
        &["x.gif"],
    );
}
