//! Hub ids: a model not in the cache is downloaded from the endpoint into the Hugging Face
//! cache layout, loads like the folder it came from, and is found again without the network.
//! The hub is a loopback HTTP server serving `fixtures/llama_gqa` (one process, one test:
//! the environment is set once).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device};
use sahara::{Batch, ForwardSpec, LoadedModel, Positions};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama_gqa")
}

/// Serves the hub API for `org/tiny` (and 404 for anything else); counts the requests.
fn serve(listener: TcpListener, hits: Arc<AtomicUsize>) {
    let dir = fixture();
    let files = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ];
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        hits.fetch_add(1, Ordering::SeqCst);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        // Skip the headers.
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                break;
            }
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let body: Option<Vec<u8>> = if path == "/api/models/org/tiny/revision/main" {
            let mut siblings: Vec<serde_json::Value> = files
                .iter()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            // Files sahara does not need are not fetched.
            siblings.push(serde_json::json!({ "rfilename": "pytorch_model.bin" }));
            siblings.push(serde_json::json!({ "rfilename": "onnx/model.onnx" }));
            Some(
                serde_json::json!({ "id": "org/tiny", "sha": COMMIT, "siblings": siblings })
                    .to_string()
                    .into_bytes(),
            )
        } else {
            path.strip_prefix(&format!("/org/tiny/resolve/{COMMIT}/"))
                .filter(|f| files.contains(f))
                .map(|f| std::fs::read(dir.join(f)).unwrap())
        };
        let head = match &body {
            Some(b) => format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                b.len()
            ),
            None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_string(),
        };
        let _ = stream.write_all(head.as_bytes());
        if let Some(b) = body {
            let _ = stream.write_all(&b);
        }
    }
}

fn last_logits(model: &LoadedModel) -> Vec<f32> {
    let ids = model.prompts.encode("Hello world", true).unwrap();
    let batch = Batch::new(std::slice::from_ref(&ids), 0, &Device::Cpu).unwrap();
    let out = model
        .decoder
        .forward(&batch, &ForwardSpec::logits(Positions::Last), None)
        .unwrap();
    out.logits
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn hub_ids_download_into_the_cache_and_load_offline_afterwards() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || serve(listener, h));
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: the only test of this binary; set before any thread reads the environment.
    unsafe {
        std::env::set_var("HF_ENDPOINT", format!("http://127.0.0.1:{port}"));
        std::env::set_var("HF_HUB_CACHE", cache.path());
        std::env::remove_var("HF_HUB_OFFLINE");
        std::env::remove_var("HF_TOKEN");
    }

    let model = LoadedModel::load("org/tiny", DType::F32, &Device::Cpu).unwrap();
    let repo = cache.path().join("models--org--tiny");
    let snapshot = repo.join("snapshots").join(COMMIT);
    assert_eq!(model.checkpoint.path(), snapshot);
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    // Snapshot entries are links into blobs named by their SHA-256, as huggingface_hub does.
    let link = std::fs::read_link(snapshot.join("model.safetensors")).unwrap();
    assert!(link.starts_with("../../blobs"), "{}", link.display());
    let mut names: Vec<String> = std::fs::read_dir(&snapshot)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    assert_eq!(std::fs::read_dir(repo.join("blobs")).unwrap().count(), 4);
    // 1 API call + 4 files.
    assert_eq!(hits.load(Ordering::SeqCst), 5);

    // Same model as the folder it came from.
    let local = LoadedModel::load(fixture().to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(last_logits(&model), last_logits(&local));

    // Found in the cache again: no request.
    let again = LoadedModel::load("org/tiny", DType::F32, &Device::Cpu).unwrap();
    assert_eq!(again.checkpoint.path(), snapshot);
    assert_eq!(hits.load(Ordering::SeqCst), 5);

    // A model the hub does not have: one line naming the cache folder and the failure.
    let e = LoadedModel::load("org/missing", DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("models--org--missing"), "{e}");
    assert!(e.contains("not found"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    assert!(!cache.path().join("models--org--missing/snapshots").exists());

    // Offline: no request, and the message says why.
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    let before = hits.load(Ordering::SeqCst);
    let e = LoadedModel::load("org/other", DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
    assert_eq!(hits.load(Ordering::SeqCst), before);

    // No server at all: the connection error is reported.
    unsafe {
        std::env::remove_var("HF_HUB_OFFLINE");
        std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    }
    let e = LoadedModel::load("org/unreachable", DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("downloading it failed") && e.contains("127.0.0.1:9"),
        "{e}"
    );
}
