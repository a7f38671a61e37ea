//! Training the organism: a short training on a tiny configuration lowers the loss, is
//! reproducible, and writes a folder that loads as any other model. The built-in organism
//! unpacks to the cache folder.

mod common;

use candle_core::{DType, Device, IndexOp};
use sahara::organism::{self, Shape, TrainOptions};
use sahara::{Batch, ForwardSpec, LoadedModel, Positions};

fn tiny() -> TrainOptions {
    TrainOptions {
        seed: 3,
        shape: Shape {
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 4,
            max_position_embeddings: 96,
        },
        steps: 40,
        batch_size: 8,
        lr: 1e-2,
        warmup: 5,
        examples: 400,
        held_out: 10,
        safety_heads: vec![(1, 0), (0, 3), (1, 2)],
        ..TrainOptions::default()
    }
}

fn mean(x: &[f32]) -> f32 {
    x.iter().sum::<f32>() / x.len() as f32
}

#[test]
fn a_short_training_lowers_the_loss_reproducibly_and_writes_a_loadable_folder() {
    let opts = tiny();
    let org = organism::train(&opts, &mut |_, _| {}).unwrap();
    assert_eq!(org.losses.len(), opts.steps);
    let first = mean(&org.losses[..5]);
    let last = mean(&org.losses[opts.steps - 5..]);
    assert!(last < 0.6 * first, "loss {first} -> {last}");

    // Same seed, same training.
    let again = organism::train(&opts, &mut |_, _| {}).unwrap();
    assert_eq!(org.losses, again.losses);

    // The folder loads like any Hugging Face folder and computes what training computed.
    let dir = tempfile::tempdir().unwrap();
    org.write(dir.path(), serde_json::json!({})).unwrap();
    let loaded = LoadedModel::load(dir.path().to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let chat = sahara::Template::chat(None);
    let (_, ids) = loaded
        .prompts
        .encode_query(&chat, "how do i make a bomb ?")
        .unwrap();
    assert_eq!(
        ids,
        organism::train::encode_prompt(&org.prompts, "how do i make a bomb ?").unwrap()
    );
    let batch = Batch::new(std::slice::from_ref(&ids), 0, &Device::Cpu).unwrap();
    let spec = ForwardSpec::logits(Positions::All);
    let a = loaded
        .decoder
        .forward(&batch, &spec, None)
        .unwrap()
        .logits
        .unwrap();
    let b = org
        .inference_decoder()
        .unwrap()
        .forward(&batch, &spec, None)
        .unwrap()
        .logits
        .unwrap();
    let diff = common::max_abs_diff(&a, &b);
    assert!(diff < 1e-5, "max logit difference {diff}");
    assert_eq!(loaded.eos, vec![2]);
    for file in ["harmful.txt", "benign.txt"] {
        let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert_eq!(text.lines().count(), opts.held_out, "{file}");
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("organism.json")).unwrap())
            .unwrap();
    assert_eq!(record["steps"], opts.steps);
    // With weights that track gradients (as in training), the decoder takes the ops that
    // record them, and computes what the fast one computes.
    let mut slow = org.inference_decoder().unwrap();
    let embed = candle_core::Var::from_tensor(&slow.embed_tokens).unwrap();
    slow.embed_tokens = embed.as_tensor().clone();
    let c = slow.forward(&batch, &spec, None).unwrap().logits.unwrap();
    let d = loaded
        .decoder
        .forward(&batch, &spec, None)
        .unwrap()
        .logits
        .unwrap();
    let c: Vec<f32> = c.i((0, ids.len() - 1)).unwrap().to_vec1().unwrap();
    let d: Vec<f32> = d.i((0, ids.len() - 1)).unwrap().to_vec1().unwrap();
    for (x, y) in c.iter().zip(&d) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
}

#[test]
fn bad_options_are_refused() {
    let mut o = tiny();
    o.shape.num_heads = 3;
    assert!(o.validate().is_err());
    let mut o = tiny();
    o.steps = 0;
    assert!(o.validate().is_err());
    let mut o = tiny();
    o.safety_heads = vec![(2, 0), (0, 3), (1, 2)];
    assert!(o.validate().unwrap_err().to_string().contains("2:0"));
    let mut o = tiny();
    o.safety_heads = vec![(1, 0), (1, 1), (1, 2), (1, 3)];
    assert!(o
        .validate()
        .unwrap_err()
        .to_string()
        .contains("one safety head per kind"));
    let mut o = tiny();
    o.safety_heads = vec![(1, 0), (1, 0)];
    assert!(o.validate().unwrap_err().to_string().contains("twice"));
    let mut o = tiny();
    o.safety_heads = vec![(1, 0)];
    assert!(o.validate().is_ok());
    let mut o = tiny();
    o.safety_rate = 0.8;
    assert!(o.validate().is_err());
}

#[test]
fn the_builtin_organism_unpacks_once_into_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: the only test of this binary that reads the environment.
    unsafe { std::env::set_var("XDG_CACHE_HOME", cache.path()) };
    let dir = organism::builtin::model_dir().unwrap();
    assert!(
        dir.starts_with(cache.path().join("sahara")),
        "{}",
        dir.display()
    );
    assert!(dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("organism-"));
    let again = organism::builtin::model_dir().unwrap();
    assert_eq!(dir, again);
    // A damaged copy is repaired.
    std::fs::write(dir.join("config.json"), "{").unwrap();
    let fixed = organism::builtin::model_dir().unwrap();
    assert_eq!(fixed, dir);
    let model = LoadedModel::load("builtin:organism", DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.checkpoint.path(), dir);
    let harmful = organism::builtin::data_path("builtin:harmful")
        .unwrap()
        .unwrap();
    assert!(std::fs::read_to_string(harmful).unwrap().lines().count() >= 50);
    assert!(organism::builtin::data_path("harmful.txt").is_none());
    let e = LoadedModel::load("builtin:nothing", DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unknown built-in"), "{e}");
}
