//! Devices and dtypes: the one home of the dtype a model computes in on each device, and of
//! what is checked before a model goes onto a GPU (float32 products without TF32, bfloat16
//! support, free memory, a driver that runs this build's kernels), each failing with one
//! clear message instead of a failure deep inside a kernel launch.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result, Setting};
use crate::model::config::ModelConfig;

/// The CUDA version this binary was built for, when its build said (scripts/build-cuda.sh).
pub const BUILT_FOR_CUDA: Option<&str> = option_env!("SAHARA_CUDA_VERSION");

/// The device's name in messages: `cpu`, `cuda:N`.
pub fn name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".into(),
        },
        Device::Metal(_) => "metal".into(),
    }
}

/// The dtype a model computes in when none is asked for: float32 on the CPU (it has no fast
/// 16-bit matrix products); on a GPU bfloat16 for a checkpoint stored in 16 bits (bfloat16
/// or float16: float16's range overflows in activations that bfloat16 holds) and float32 for
/// one stored in float32 or of unknown storage (GGUF files, whose weights are dequantized).
pub fn default_dtype(cfg: &ModelConfig, device: &Device) -> DType {
    default_dtype_on(cfg, !device.is_cpu())
}

/// [`default_dtype`] on a GPU (`gpu`) or the CPU.
pub fn default_dtype_on(cfg: &ModelConfig, gpu: bool) -> DType {
    if !gpu {
        return DType::F32;
    }
    match cfg.stored_dtype.as_deref() {
        Some("bfloat16" | "float16" | "bf16" | "fp16" | "half") => DType::BF16,
        _ => DType::F32,
    }
}

fn device_error(device: &Device, message: impl Into<String>) -> Error {
    Error::Device {
        device: name(device),
        message: message.into(),
    }
}

/// A dtype's name in outputs and run records: `f32`, `bf16`, `f16`.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// Bytes of device memory the weights of `cfg` take in `dtype`.
pub fn weight_bytes(cfg: &ModelConfig, dtype: DType) -> usize {
    cfg.num_parameters() * dtype.size_in_bytes()
}

/// Readies `device` for a model of `cfg` in `dtype`. On a GPU: float32 matrix products are
/// set, and checked, not to use TF32 (10-bit mantissas would break the float32 tolerance);
/// bfloat16 needs compute capability 8.0; the weights must fit in the free memory with a
/// quarter to spare for activations; and one small kernel must run (a driver older than this
/// build's CUDA version cannot load its kernels). Nothing on the CPU.
pub fn prepare(device: &Device, cfg: &ModelConfig, dtype: DType) -> Result<()> {
    prepare_for(device, cfg, dtype, weight_bytes(cfg, dtype))
}

/// [`prepare`] for weights that take `need` bytes on the device (quantized ones take fewer
/// than [`weight_bytes`]).
pub fn prepare_for(device: &Device, cfg: &ModelConfig, dtype: DType, need: usize) -> Result<()> {
    // Read by the GPU checks only, which a build without CUDA has not.
    #[cfg(not(feature = "cuda"))]
    let _ = (cfg, dtype, need);
    if !device.is_cuda() {
        return Ok(());
    }
    candle_core::cuda::set_gemm_reduced_precision_f32(false);
    assert!(
        !candle_core::cuda::gemm_reduced_precision_f32(),
        "float32 matrix products must not use TF32"
    );
    let probe = || -> candle_core::Result<f32> {
        let t = Tensor::ones(4, DType::F32, device)?;
        (&t + &t)?.sum_all()?.to_scalar::<f32>()
    };
    match probe() {
        Ok(v) => {
            if v != 8.0 {
                return Err(device_error(
                    device,
                    format!("a test kernel computed {v} instead of 8: the device is not usable"),
                ));
            }
        }
        Err(e) => {
            let built =
                BUILT_FOR_CUDA.map_or(String::new(), |v| format!(" (this build is for CUDA {v})"));
            return Err(device_error(
                device,
                format!(
                    "cannot run a kernel: {}; a driver older than the CUDA version sahara was built for cannot load its kernels{built}",
                    crate::error::one_line(&e.to_string())
                ),
            ));
        }
    }
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let ctx = d.cuda_stream().context().clone();
        let gpu = ctx.name().unwrap_or_else(|_| "the GPU".into());
        if dtype == DType::BF16 {
            let (major, minor) = ctx.compute_capability().map_err(|e| {
                device_error(device, format!("cannot read its compute capability: {e}"))
            })?;
            if major < 8 {
                return Err(device_error(
                    device,
                    format!("{gpu} (compute capability {major}.{minor}) has no bfloat16; bfloat16 needs 8.0 or later: compute in float32 or float16"),
                ));
            }
        }
        let (free, total) = ctx
            .mem_get_info()
            .map_err(|e| device_error(device, format!("cannot read its free memory: {e}")))?;
        // A quarter more for activations, the key/value cache and the library's workspace.
        if need + need / 4 > free {
            let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
            return Err(device_error(
                device,
                format!(
                    "the model needs {:.1} GiB for its weights ({} parameters, computing in {dtype:?}) and about a quarter more to run, but {gpu} has {:.1} GiB free of {:.1} GiB",
                    gib(need),
                    cfg.num_parameters(),
                    gib(free),
                    gib(total)
                ),
            ));
        }
    }
    Ok(())
}

/// Activation memory a batch may use when nothing else is asked for on the CPU: 1 GiB.
pub const CPU_DEFAULT_BUDGET: usize = 1 << 30;

/// The share of a GPU's free memory (read after the weights are on it) that batches may
/// use; the rest is the margin for the allocator's fragmentation, cuBLAS's workspace and the
/// estimate's error. A batch that does not fit anyway is split ([`crate::methods::engine`]).
pub const GPU_BUDGET_SHARE: f64 = 0.8;

/// The memory planner: bytes of activations one batch may use on `device`. `limit` (the
/// user's bound, when given) is an upper bound; on a GPU the budget is also at most
/// [`GPU_BUDGET_SHARE`] of the memory free now, queried once; on the CPU it is `limit`, or
/// [`CPU_DEFAULT_BUDGET`].
pub fn memory_budget(device: &Device, limit: Option<usize>) -> Result<usize> {
    let free = free_memory(device)?;
    Ok(plan_budget(free, limit))
}

/// [`memory_budget`] of a decoder's devices: the smallest of its parts' (a batch's
/// activations are on each part in turn).
pub fn placement_budget(
    placement: &crate::model::decoder::DevicePlan,
    limit: Option<usize>,
) -> Result<usize> {
    let mut least = usize::MAX;
    for d in &placement.devices {
        least = least.min(memory_budget(d, limit)?);
    }
    Ok(least)
}

/// [`memory_budget`] from the device's free bytes (`None` on the CPU).
pub fn plan_budget(free: Option<usize>, limit: Option<usize>) -> usize {
    match free {
        None => limit.unwrap_or(CPU_DEFAULT_BUDGET),
        Some(free) => {
            let share = (free as f64 * GPU_BUDGET_SHARE) as usize;
            limit.map_or(share, |l| l.min(share)).max(1)
        }
    }
}

/// Bytes free on a GPU now; `None` on the CPU.
pub fn free_memory(device: &Device) -> Result<Option<usize>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let (free, _) = d
            .cuda_stream()
            .context()
            .mem_get_info()
            .map_err(|e| device_error(device, format!("cannot read its free memory: {e}")))?;
        return Ok(Some(free));
    }
    let _ = device;
    Ok(None)
}

/// Where the parts of a model go when it is split over several devices: contiguous ranges of
/// layers, in device order, the embedding on the first device and the final norm and
/// unembedding on the last (as accelerate's `device_map="auto"` places a transformers model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Layers of each device, in order; a device may get none.
    pub layers: Vec<std::ops::Range<usize>>,
    /// Bytes each device holds: its layers' weights, plus the embedding (first) or the head
    /// (last).
    pub bytes: Vec<usize>,
}

/// Bytes of each decoder layer's weights in `dtype` (layers with experts hold more than
/// dense ones), and of the embedding and the head (final norm and unembedding, 0 more when
/// tied).
pub fn part_bytes(cfg: &ModelConfig, dtype: DType) -> (Vec<usize>, usize, usize) {
    let e = dtype.size_in_bytes();
    let emb = cfg.vocab_size * cfg.hidden_size * e;
    let head = cfg.hidden_size * e + if cfg.tie_word_embeddings { 0 } else { emb };
    let layers = (0..cfg.num_layers)
        .map(|l| cfg.layer_parameters(l).saturating_mul(e))
        .collect();
    (layers, emb, head)
}

/// Places `cfg`'s layers on devices with `free` bytes each, keeping `per_device_reserve`
/// bytes on every device for activations, the key/value cache and the library's workspace:
/// devices are filled in order, each with as many whole layers as fit (the first also holds
/// the embedding, the last the head), so that the residual stream crosses a device boundary
/// as few times as possible. Fails, saying how much is needed and how much there is, when the
/// model does not fit.
pub fn place_layers(
    cfg: &ModelConfig,
    dtype: DType,
    free: &[usize],
    per_device_reserve: usize,
) -> Result<Placement> {
    let (layer, emb, head) = part_bytes(cfg, dtype);
    let n = cfg.num_layers;
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let layers_total: usize = layer.iter().sum();
    let need = emb + head + layers_total;
    let have: usize = free
        .iter()
        .map(|f| f.saturating_sub(per_device_reserve))
        .sum();
    let too_small = || {
        Error::Device {
        device: format!("{} device(s)", free.len()),
        message: format!(
            "the model needs {:.1} GiB for its weights in {dtype:?} ({n} layers of {:.2} GiB, embedding {:.2} GiB, head {:.2} GiB) but the devices have {:.1} GiB free after keeping {:.1} GiB each for activations",
            gib(need),
            gib(layers_total / n.max(1)),
            gib(emb),
            gib(head),
            gib(have),
            gib(per_device_reserve)
        ),
    }
    };
    if free.is_empty() {
        return Err(too_small());
    }
    let mut layers = Vec::with_capacity(free.len());
    let mut bytes = Vec::with_capacity(free.len());
    let mut next = 0;
    let mut done = false;
    for (i, &f) in free.iter().enumerate() {
        if done {
            layers.push(n..n);
            bytes.push(0);
            continue;
        }
        let last = i + 1 == free.len();
        let mut budget = f.saturating_sub(per_device_reserve);
        let mut used = 0;
        if i == 0 {
            if budget < emb {
                return Err(too_small());
            }
            budget -= emb;
            used += emb;
        }
        let start = next;
        while next < n && budget >= layer[next] {
            budget -= layer[next];
            used += layer[next];
            next += 1;
        }
        if next == n {
            if budget >= head {
                // The model ends here: this device holds the head too.
                used += head;
                done = true;
            } else if last || next == start {
                return Err(too_small());
            } else {
                // No room for the head: the last layer moves to the next device with it.
                next -= 1;
                used -= layer[next];
            }
        }
        layers.push(start..next);
        bytes.push(used);
    }
    if !done {
        return Err(too_small());
    }
    Ok(Placement { layers, bytes })
}

/// How a model of `cfg` in `dtype` is split over `devices` (in order): where every device
/// reports its free memory (GPUs), by [`place_layers`], keeping a quarter of the largest free
/// memory on each device for activations and the key/value cache as [`prepare`] does; where
/// one does not (the CPU), evenly by layer count. Returns the plan and the bytes of weights
/// each device gets (0 where not known).
pub fn plan_devices(
    cfg: &ModelConfig,
    dtype: DType,
    devices: &[Device],
) -> Result<(crate::model::decoder::DevicePlan, Vec<usize>)> {
    use crate::model::decoder::DevicePlan;
    let free: Option<Vec<usize>> = devices
        .iter()
        .map(free_memory)
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .collect();
    match free {
        Some(free) => {
            let reserve = free.iter().copied().max().unwrap_or(0) / 4;
            let p = place_layers(cfg, dtype, &free, reserve)?;
            Ok((DevicePlan::split(devices, &p.layers)?, p.bytes))
        }
        None => {
            let ranges = crate::io::shard::balanced_ranges(&vec![1; cfg.num_layers], devices.len());
            Ok((DevicePlan::split(devices, &ranges)?, vec![0; devices.len()]))
        }
    }
}

/// Transfers between the host and the device on the hot paths (the variant engine, generation,
/// the decoder's per-call tables): the one place they are made, and counted, so that tests on
/// the CPU can check that a sweep reads back one result per batch and a decoding step one
/// small one, never something per layer or per head. Counts are per thread (a sweep runs on
/// the thread that called it) and count calls, not bytes. Loading weights and the rare
/// diagnosis of a non-finite output are not counted.
pub mod transfers {
    use std::cell::Cell;

    use candle_core::{Device, Shape, Tensor, WithDType};

    use crate::error::Result;

    /// Transfers made on this thread so far.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Counts {
        /// Device-to-host reads: each one waits for the device to finish what came before.
        pub to_host: u64,
        /// Host-to-device copies (tokens, position tables, masks, ablation plans).
        pub to_device: u64,
        /// Copies between the parts of a decoder split over devices (the residual stream at
        /// a boundary, the rotary tables), counted even where two parts are the same device.
        pub between: u64,
    }

    impl std::ops::Sub for Counts {
        type Output = Counts;
        fn sub(self, o: Counts) -> Counts {
            Counts {
                to_host: self.to_host - o.to_host,
                to_device: self.to_device - o.to_device,
                between: self.between - o.between,
            }
        }
    }

    thread_local! {
        static COUNTS: Cell<Counts> =
            const { Cell::new(Counts { to_host: 0, to_device: 0, between: 0 }) };
    }

    /// This thread's counts.
    pub fn counts() -> Counts {
        COUNTS.with(Cell::get)
    }

    fn add(to_host: u64, to_device: u64) {
        COUNTS.with(|c| {
            let v = c.get();
            c.set(Counts {
                to_host: v.to_host + to_host,
                to_device: v.to_device + to_device,
                between: v.between,
            })
        });
    }

    /// `t` on `device`, for another part of a split decoder (a copy between GPUs; none
    /// where the parts share a device).
    pub fn between(t: &Tensor, device: &Device) -> Result<Tensor> {
        COUNTS.with(|c| {
            let mut v = c.get();
            v.between += 1;
            c.set(v)
        });
        Ok(t.to_device(device)?)
    }

    /// A tensor of `shape` on `device` from host values.
    pub fn upload<T: WithDType, S: Into<Shape>>(
        data: Vec<T>,
        shape: S,
        device: &Device,
    ) -> Result<Tensor> {
        add(0, 1);
        Ok(Tensor::from_vec(data, shape, device)?)
    }

    /// A 1-D tensor's values on the host.
    pub fn read_vec1<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
        add(1, 0);
        Ok(t.to_vec1()?)
    }

    /// A 2-D tensor's rows on the host.
    pub fn read_vec2<T: WithDType>(t: &Tensor) -> Result<Vec<Vec<T>>> {
        add(1, 0);
        Ok(t.to_vec2()?)
    }
}

/// Parses a `--dtype` value; `None` for auto.
pub fn parse_dtype(s: &str) -> Result<Option<DType>> {
    Ok(Some(match s {
        "auto" => return Ok(None),
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        other => {
            return Err(Error::bad_value(
                Setting::Dtype,
                format!("{other:?}"),
                "expected auto, f32, bf16 or f16",
            ))
        }
    }))
}

/// Parses a `--device` list: one device, or several separated by commas for a model split
/// over them. A device listed twice is one device (its parts share it).
pub fn parse_devices(s: &str) -> Result<Vec<Device>> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() > 1 && parts.contains(&"cpu") && parts.iter().any(|p| *p != "cpu") {
        return Err(Error::bad_value(
            Setting::Device,
            format!("{s:?}"),
            "mixes the CPU and GPUs: split a model over GPUs only (a list of cpu runs the split code on the CPU)",
        ));
    }
    let mut seen: Vec<(&str, Device)> = Vec::new();
    let mut out = Vec::new();
    for part in parts {
        let d = match seen.iter().find(|(n, _)| *n == part) {
            Some((_, d)) => d.clone(),
            None => {
                let d = parse_device(part)?;
                seen.push((part, d.clone()));
                d
            }
        };
        out.push(d);
    }
    Ok(out)
}

pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    Error::bad_value(Setting::Device, format!("{s:?}"), "expected cuda:N")
                })?,
                None => 0,
            };
            if !cfg!(feature = "cuda") {
                return Err(Error::bad_value(
                    Setting::Device,
                    s,
                    "cannot be used: this sahara is built without CUDA (build it with --features cuda, or scripts/build-cuda.sh)",
                ));
            }
            Device::new_cuda(ordinal).map_err(|e| {
                let e = crate::error::one_line(&e.to_string());
                Error::bad_value(Setting::Device, s, format!("cannot be used: {e}"))
            })
        }
        other => Err(Error::bad_value(
            Setting::Device,
            format!("{other:?}"),
            "expected cpu, cuda or cuda:N",
        )),
    }
}

/// Loads a model as `--model`, `--dtype` and `--device` name it: `dtype` is `auto` (see
/// [`default_dtype`]) or a dtype [`parse_dtype`] reads, `devices` one device or a list for a
/// split model ([`parse_devices`]).
pub fn load(
    model: &str,
    dtype: &str,
    devices: &str,
    opts: crate::LoadOptions,
) -> Result<crate::LoadedModel> {
    let dtype = parse_dtype(dtype)?;
    let devices = parse_devices(devices)?;
    let dtype = match dtype {
        Some(d) => d,
        None => {
            let cfg = crate::Checkpoint::resolve(model)?.config()?;
            default_dtype(&cfg, &devices[0])
        }
    };
    crate::LoadedModel::load_on(model, dtype, &devices, opts)
}

/// Keeps freed tensor buffers in the heap for reuse: by default glibc returns every large
/// buffer to the kernel and the next forward pass faults its pages in again (about a tenth of
/// a CPU forward pass). Process-wide; call it once, before other threads allocate (the `sahara`
/// binary at start, the Python module when it is imported).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::RawConfig;

    fn cfg(stored: &str) -> ModelConfig {
        let raw: RawConfig = serde_json::from_str(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 10, "torch_dtype": "{stored}"}}"#
        ))
        .unwrap();
        ModelConfig::resolve(&raw).unwrap()
    }

    #[test]
    fn the_cpu_computes_in_float32_whatever_the_checkpoint() {
        for stored in ["bfloat16", "float16", "float32"] {
            assert_eq!(default_dtype(&cfg(stored), &Device::Cpu), DType::F32);
        }
        assert_eq!(cfg("float16").stored_dtype.as_deref(), Some("float16"));
        // Nothing to check on the CPU.
        prepare(&Device::Cpu, &cfg("float32"), DType::BF16).unwrap();
        assert_eq!(name(&Device::Cpu), "cpu");
    }

    #[test]
    fn a_gpu_computes_16_bit_checkpoints_in_bfloat16_and_the_rest_in_float32() {
        assert_eq!(default_dtype_on(&cfg("bfloat16"), true), DType::BF16);
        // float16 checkpoints (Llama-2-7b-chat, Vicuna) too: bfloat16 has float32's range.
        assert_eq!(default_dtype_on(&cfg("float16"), true), DType::BF16);
        assert_eq!(default_dtype_on(&cfg("float32"), true), DType::F32);
        let mut unknown = cfg("float32");
        unknown.stored_dtype = None;
        assert_eq!(default_dtype_on(&unknown, true), DType::F32);
    }

    #[test]
    fn the_planner_bounds_batches_by_the_free_memory_and_the_users_limit() {
        let gib = 1usize << 30;
        // CPU: the user's limit, else 1 GiB.
        assert_eq!(plan_budget(None, None), CPU_DEFAULT_BUDGET);
        assert_eq!(plan_budget(None, Some(3 * gib)), 3 * gib);
        // GPU: 80% of the free memory, and never more than the user's limit.
        assert_eq!(plan_budget(Some(100 * gib), None), 80 * gib);
        assert_eq!(plan_budget(Some(100 * gib), Some(4 * gib)), 4 * gib);
        assert_eq!(plan_budget(Some(10 * gib), Some(40 * gib)), 8 * gib);
        assert_eq!(
            memory_budget(&Device::Cpu, None).unwrap(),
            CPU_DEFAULT_BUDGET
        );
    }

    fn shape(
        layers: usize,
        hidden: usize,
        inter: usize,
        heads: usize,
        kv: usize,
        vocab: usize,
    ) -> ModelConfig {
        let raw: RawConfig = serde_json::from_str(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": {hidden}, "intermediate_size": {inter},
                "num_hidden_layers": {layers}, "num_attention_heads": {heads}, "num_key_value_heads": {kv},
                "vocab_size": {vocab}}}"#
        ))
        .unwrap();
        ModelConfig::resolve(&raw).unwrap()
    }

    #[test]
    fn layers_with_experts_weigh_more_than_dense_ones_in_the_placement() {
        // Qwen2-MoE with dense layers 0 and 1 (`mlp_only_layers`) and 60 experts elsewhere.
        let raw: crate::model::config::RawConfig = serde_json::from_str(
            r#"{"architectures": ["Qwen2MoeForCausalLM"], "hidden_size": 2048, "intermediate_size": 5632,
                "num_hidden_layers": 24, "num_attention_heads": 16, "vocab_size": 151936,
                "num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
                "shared_expert_intermediate_size": 5632, "mlp_only_layers": [0, 1]}"#,
        )
        .unwrap();
        let cfg = ModelConfig::resolve(&raw).unwrap();
        let (layers, emb, head) = part_bytes(&cfg, DType::BF16);
        assert!(layers[2] > 5 * layers[0], "{layers:?}");
        assert_eq!(
            emb + head + layers.iter().sum::<usize>(),
            weight_bytes(&cfg, DType::BF16)
        );
        // Room for the embedding, the two dense layers and one sparse one on the first device:
        // the split falls after layer 2, where the bytes say, not after an average layer.
        let free0 = emb + layers[0] + layers[1] + layers[2] + layers[3] / 2;
        let rest = layers[3..].iter().sum::<usize>() + head;
        let p = place_layers(&cfg, DType::BF16, &[free0, rest], 0).unwrap();
        assert_eq!(p.layers, vec![0..3, 3..24]);
    }

    #[test]
    fn layers_are_placed_on_devices_by_their_free_memory() {
        // GPUs are sold in decimal gigabytes (an H200's 141 GB are 131 GiB).
        let gb = 1_000_000_000usize;
        let llama7b = shape(32, 4096, 11008, 32, 32, 32000);
        let llama70b = shape(80, 8192, 28672, 64, 8, 128256);
        let llama405b = shape(126, 16384, 53248, 128, 8, 128256);
        let reserve = 8 * gb;
        for (name, cfg) in [("7B", &llama7b), ("70B", &llama70b), ("405B", &llama405b)] {
            for per_device in [80 * gb, 141 * gb] {
                for n in [1, 2, 4, 8] {
                    let free = vec![per_device; n];
                    let (layers, emb, head) = part_bytes(cfg, DType::BF16);
                    let layer = layers[0];
                    let need = weight_bytes(cfg, DType::BF16);
                    assert_eq!(emb + head + layers.iter().sum::<usize>(), need);
                    let fits = need <= n * (per_device - reserve);
                    match place_layers(cfg, DType::BF16, &free, reserve) {
                        Ok(p) => {
                            // Every layer once, in order, contiguous; no device over budget.
                            assert_eq!(p.layers.first().unwrap().start, 0);
                            assert_eq!(p.layers.last().unwrap().end, cfg.num_layers);
                            assert!(p.layers.windows(2).all(|w| w[0].end == w[1].start));
                            assert!(
                                p.bytes.iter().all(|&b| b <= per_device - reserve),
                                "{name} {n}"
                            );
                            assert_eq!(p.bytes.iter().sum::<usize>(), need);
                        }
                        Err(e) => {
                            // Only a model that does not fit, or nearly (whole layers), fails.
                            assert!(
                                !fits || need + n * layer > n * (per_device - reserve),
                                "{name} on {n} x {} GiB: {e}",
                                per_device / gb
                            );
                            assert!(e.to_string().contains("GiB free"), "{e}");
                        }
                    }
                }
            }
        }
        // 7B in bf16 (13.5 GB) fits one 80 GB GPU: all layers there.
        let p = place_layers(&llama7b, DType::BF16, &[80 * gb], reserve).unwrap();
        assert_eq!(p.layers, vec![0..32]);
        // 70B in bf16 (141 GB) needs two H200s or more, and fits two: the first full, the
        // rest with the head on the second.
        assert!(place_layers(&llama70b, DType::BF16, &[141 * gb], reserve).is_err());
        let p = place_layers(&llama70b, DType::BF16, &[141 * gb, 141 * gb], reserve).unwrap();
        // The README's figures: layers 0-75 and the embedding (132 GB) on the first.
        assert_eq!(p.layers, vec![0..76, 76..80]);
        assert_eq!(p.bytes[0] / 1_000_000_000, 132);
        // On 4 x 80 GB it spreads over 3 devices, filling them in order.
        let p = place_layers(&llama70b, DType::BF16, &[80 * gb; 4], reserve).unwrap();
        assert!(
            p.layers[0].len() >= p.layers[1].len() && p.layers[3].is_empty()
                || p.layers[3].len() < 30,
            "{p:?}"
        );
        // 405B in bf16 (~810 GB) fits 8 x 141 GB, not 8 x 80 GB.
        assert!(place_layers(&llama405b, DType::BF16, &[141 * gb; 8], reserve).is_ok());
        assert!(place_layers(&llama405b, DType::BF16, &[80 * gb; 8], reserve).is_err());
    }

    #[test]
    fn weight_bytes_follow_the_parameters_and_dtype() {
        let c = cfg("float32");
        assert_eq!(weight_bytes(&c, DType::F32), 4 * c.num_parameters());
        assert_eq!(weight_bytes(&c, DType::BF16), 2 * c.num_parameters());
    }
}
