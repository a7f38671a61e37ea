//! Training the organism with candle's autograd and AdamW, and writing it as a Hugging Face
//! model folder.
//!
//! Every weight is a [`Var`]; the decoder of [`crate::model`] is built once over the
//! variables' tensors (tensors that track gradients take only gradient-recording operations,
//! see [`crate::model::ops`]), and
//! the optimizer updates the variables in place. The loss is the cross-entropy of the
//! assistant's tokens (answer and end-of-sequence token) given everything before them.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use super::language::{self, Request};
use crate::error::{Error, Result};
use crate::io::fs::write_json;
use crate::io::prompt::{ChatTemplate, Message, PromptEncoder};
use crate::methods::generate::{generate, GenerateOptions};
use crate::model::ablation::{AblationPlan, HeadAblation, Op, Target};
use crate::model::config::{ModelConfig, RawConfig};
use crate::model::{
    Attention, Batch, Decoder, FeedForward, ForwardSpec, Layer, Linear, Mlp, Positions,
};

/// The ablation the safety heads are trained against: query scaled by this factor.
pub const SAFETY_EPSILON: f64 = 1e-5;

/// The organism's architecture: a Llama without grouped-query attention.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub max_position_embeddings: usize,
}

impl Default for Shape {
    /// The shipped organism: 4 layers × 8 heads of dimension 8, hidden size 64.
    fn default() -> Self {
        Shape {
            hidden_size: 64,
            intermediate_size: 256,
            num_layers: 4,
            num_heads: 8,
            max_position_embeddings: 128,
        }
    }
}

/// How the organism is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    pub seed: u64,
    pub shape: Shape,
    /// Optimizer steps.
    pub steps: usize,
    /// Conversations per step.
    pub batch_size: usize,
    /// Peak learning rate (linear warmup, then cosine decay to a tenth of it).
    pub lr: f64,
    pub warmup: usize,
    /// AdamW weight decay of the matrices (norm weights are not decayed).
    pub weight_decay: f64,
    /// Training conversations generated (half harmful, half benign).
    pub examples: usize,
    /// Held-out prompts of each class.
    pub held_out: usize,
    /// Weight of the head-sparsity penalty: the sum over heads of the norm of the head's
    /// value and output weights (a group lasso, which makes the model use few heads).
    pub head_penalty: f64,
    /// Steps, out of `steps`, of a first phase in which every request, harmful or not, gets
    /// the helpful answer (pretraining before safety tuning).
    pub pretrain_steps: usize,
    /// The heads that are to carry the refusal, as (layer, head): one for every kind of
    /// harmful topic, or one per kind (weapons, poisons and drugs, intrusion and theft; kind
    /// k is carried by head k mod n); empty for plain training. Some training rows run with a
    /// subset of them ablated (query scaled by 1e-5, the method's default) and are taught to
    /// answer the harmful requests of the ablated heads' kinds helpfully; others run with
    /// other heads ablated and keep every answer. The refusal is then localised in these
    /// heads by construction: the known answer that the end-to-end tests ask `sahara
    /// attribute` to find from the model's outputs alone.
    pub safety_heads: Vec<(usize, usize)>,
    /// Share of rows trained with a subset of the safety heads ablated.
    pub safety_rate: f64,
    /// Share of rows trained with 1 to 3 other heads ablated (answers unchanged).
    pub other_rate: f64,
}

impl Default for TrainOptions {
    /// The settings of the shipped organism.
    fn default() -> Self {
        TrainOptions {
            seed: 0,
            shape: Shape::default(),
            steps: 1500,
            batch_size: 32,
            lr: 3e-3,
            warmup: 100,
            weight_decay: 0.05,
            examples: 8000,
            held_out: 100,
            head_penalty: 1e-3,
            pretrain_steps: 0,
            safety_heads: vec![(2, 4)],
            safety_rate: 0.3,
            other_rate: 0.3,
        }
    }
}

impl TrainOptions {
    pub fn validate(&self) -> Result<()> {
        let s = &self.shape;
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.steps == 0 || self.batch_size == 0 || self.examples < 2 || self.held_out < 2 {
            return bad(
                "steps, batch size, examples (≥ 2) and held-out prompts (≥ 2) must be positive"
                    .into(),
            );
        }
        if s.num_heads == 0
            || !s.hidden_size.is_multiple_of(s.num_heads)
            || !(s.hidden_size / s.num_heads).is_multiple_of(2)
        {
            return bad(format!(
                "hidden size {} must be a multiple of the {} heads with an even head dimension",
                s.hidden_size, s.num_heads
            ));
        }
        if s.num_layers == 0 || s.intermediate_size == 0 {
            return bad("layers and intermediate size must be positive".into());
        }
        if self.pretrain_steps >= self.steps {
            return bad(format!(
                "pretraining steps ({}) must be fewer than the steps ({})",
                self.pretrain_steps, self.steps
            ));
        }
        if self.safety_heads.len() > language::REFUSALS.len() {
            return bad(format!(
                "give at most one safety head per kind of harmful topic ({}), got {}",
                language::REFUSALS.len(),
                self.safety_heads.len()
            ));
        }
        for (i, &(l, h)) in self.safety_heads.iter().enumerate() {
            if l >= s.num_layers || h >= s.num_heads {
                return bad(format!(
                    "safety head {l}:{h} is outside the model ({} layers × {} heads)",
                    s.num_layers, s.num_heads
                ));
            }
            if self.safety_heads[..i].contains(&(l, h)) {
                return bad(format!("safety head {l}:{h} is given twice"));
            }
        }
        let rates = [self.safety_rate, self.other_rate];
        if rates.iter().any(|r| !(0.0..=1.0).contains(r)) || rates.iter().sum::<f64>() > 1.0 {
            return bad(format!(
                "the shares of ablated rows ({} and {}) must lie in [0, 1] and add up to at most 1",
                self.safety_rate, self.other_rate
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate must be positive, got {}", self.lr));
        }
        Ok(())
    }

    /// Learning rate at a step: linear warmup, then cosine decay to a tenth.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = (self.steps - self.warmup).max(1) as f64;
        let t = ((step - self.warmup) as f64 / span).min(1.0);
        self.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }
}

/// `config.json` of the organism.
pub fn config_json(shape: &Shape, vocab_size: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_heads,
        "head_dim": shape.hidden_size / shape.num_heads,
        "vocab_size": vocab_size,
        "tie_word_embeddings": false,
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "torch_dtype": "float32",
    })
}

/// The organism's tokenizer and chat template, built in memory.
pub fn prompt_encoder() -> Result<PromptEncoder> {
    let json = language::tokenizer_json().to_string();
    let tokenizer: tokenizers::Tokenizer = json.parse().map_err(|e| Error::Tokenizer {
        path: "tokenizer.json".into(),
        message: format!("{e}"),
    })?;
    let specials = vec![
        ("bos_token".to_string(), language::BOS.to_string()),
        ("eos_token".to_string(), language::EOS.to_string()),
        ("unk_token".to_string(), language::UNK.to_string()),
        ("pad_token".to_string(), language::EOS.to_string()),
    ];
    let chat = ChatTemplate::new(language::CHAT_TEMPLATE, specials)?;
    Ok(PromptEncoder {
        tokenizer,
        chat: Some(Ok(chat)),
        tokenizer_path: "tokenizer.json".into(),
        pad_id: 2,
        embeddings: None,
    })
}

/// The prompt tokens of a query under the chat template.
pub fn encode_prompt(enc: &PromptEncoder, query: &str) -> Result<Vec<u32>> {
    Ok(enc.encode_query(&crate::Template::chat(None), query)?.1)
}

/// One training conversation: prompt and answer tokens (the answer ends with `</s>`).
#[derive(Debug, Clone)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
}

fn encode_example(enc: &PromptEncoder, r: &Request, helpful: bool) -> Result<Example> {
    let prompt = encode_prompt(enc, &r.text)?;
    let text = if helpful {
        language::helpful_answer(r.verb, r.det, r.topic)
    } else {
        r.answer()
    };
    let mut answer = enc.encode(&text, false)?;
    answer.push(2);
    // The prompt and answer tokens are the tokens of the whole rendered conversation.
    debug_assert_eq!(
        {
            let chat = enc.chat.as_ref().unwrap().as_ref().unwrap();
            let full = chat
                .render(
                    &[
                        Message::new("user", &r.text),
                        Message::new("assistant", &text),
                    ],
                    false,
                )
                .unwrap();
            enc.encode(&full, false).unwrap()
        },
        [prompt.as_slice(), answer.as_slice()].concat()
    );
    Ok(Example { prompt, answer })
}

/// The weights as variables.
pub struct Params {
    pub embed: Var,
    pub layers: Vec<LayerParams>,
    pub norm: Var,
    pub lm_head: Var,
}

pub struct LayerParams {
    pub input_layernorm: Var,
    pub post_attention_layernorm: Var,
    /// q, k, v rows stacked: (3·H·D, d).
    pub qkv: Var,
    pub o: Var,
    /// gate, up rows stacked: (2·I, d).
    pub gate_up: Var,
    pub down: Var,
}

/// Normal samples by the Box-Muller transform.
fn normal(rng: &mut impl Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(1e-12);
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect()
}

impl Params {
    fn init(shape: &Shape, vocab: usize, seed: u64) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5e_ed0f_0a11);
        let dev = Device::Cpu;
        let d = shape.hidden_size;
        let i = shape.intermediate_size;
        let std_in = 1.0 / (d as f64).sqrt();
        let std_out = std_in / (2.0 * shape.num_layers as f64).sqrt();
        let mut var = |rows: usize, cols: usize, std: f64| -> Result<Var> {
            let t = Tensor::from_vec(normal(&mut rng, rows * cols, std), (rows, cols), &dev)?;
            Ok(Var::from_tensor(&t)?)
        };
        let embed = var(vocab, d, 1.0)?;
        let mut layers = Vec::with_capacity(shape.num_layers);
        for _ in 0..shape.num_layers {
            layers.push(LayerParams {
                input_layernorm: Var::from_tensor(&Tensor::ones(d, DType::F32, &dev)?)?,
                post_attention_layernorm: Var::from_tensor(&Tensor::ones(d, DType::F32, &dev)?)?,
                qkv: var(3 * d, d, std_in)?,
                o: var(d, d, std_out)?,
                gate_up: var(2 * i, d, std_in)?,
                down: var(d, i, std_out * (d as f64 / i as f64).sqrt())?,
            });
        }
        let norm = Var::from_tensor(&Tensor::ones(d, DType::F32, &dev)?)?;
        let lm_head = var(vocab, d, std_in)?;
        Ok(Params {
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// Matrices (decayed) and norm weights (not decayed).
    fn groups(&self) -> (Vec<Var>, Vec<Var>) {
        let mut m = vec![self.embed.clone(), self.lm_head.clone()];
        let mut n = vec![self.norm.clone()];
        for l in &self.layers {
            m.extend([
                l.qkv.clone(),
                l.o.clone(),
                l.gate_up.clone(),
                l.down.clone(),
            ]);
            n.extend([
                l.input_layernorm.clone(),
                l.post_attention_layernorm.clone(),
            ]);
        }
        (m, n)
    }

    /// Norm of each head's weights that write to the residual stream: its `v_proj` rows and
    /// its `o_proj` columns together (a head whose norm is zero writes nothing; scaling one
    /// up and the other down cannot hide a head): (L, H).
    pub fn head_norms(&self, shape: &Shape) -> Result<Tensor> {
        let (d, h) = (shape.hidden_size, shape.num_heads);
        let hd = d / h;
        let per_layer: Vec<Tensor> = self
            .layers
            .iter()
            .map(|l| {
                // o_proj (d, H·D) -> (d, H, D) -> (H,)
                let o = l.o.as_tensor().reshape((d, h, hd))?.sqr()?.sum(2)?.sum(0)?;
                // v rows of qkv_proj (H·D, d) -> (H, D, d) -> (H,)
                let v = l
                    .qkv
                    .as_tensor()
                    .narrow(0, 2 * d, d)?
                    .reshape((h, hd, d))?
                    .sqr()?
                    .sum(2)?
                    .sum(1)?;
                ((o + v)? + 1e-12)?.sqrt()
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Tensor::stack(&per_layer, 0)?)
    }

    /// A decoder over the variables' tensors (it sees every update).
    pub fn decoder(&self, cfg: &ModelConfig) -> Result<Decoder> {
        let lin = |v: &Var| Linear::dense(v.as_tensor().clone(), None);
        let layers = self
            .layers
            .iter()
            .map(|l| Layer {
                input_layernorm: Some(l.input_layernorm.as_tensor().clone()),
                post_attention_layernorm: l.post_attention_layernorm.as_tensor().clone(),
                pre_feedforward_layernorm: None,
                post_feedforward_layernorm: None,
                q_norm: None,
                k_norm: None,
                sinks: None,
                attn: Attention {
                    qkv_proj: lin(&l.qkv),
                    o_proj: lin(&l.o),
                },
                mlp: FeedForward::Mlp(Mlp {
                    gate_up_proj: lin(&l.gate_up),
                    down_proj: lin(&l.down),
                }),
            })
            .collect();
        Decoder::from_parts(
            cfg.clone(),
            self.embed.as_tensor().clone(),
            layers,
            self.norm.as_tensor().clone(),
            self.lm_head.as_tensor().clone(),
            DType::F32,
            &Device::Cpu,
        )
    }

    /// The weights under their Hugging Face names, q/k/v and gate/up split apart.
    pub fn named_tensors(&self, shape: &Shape) -> Result<Vec<(String, Tensor)>> {
        let d = shape.hidden_size;
        let i = shape.intermediate_size;
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed.as_tensor().detach(),
        )];
        for (l, p) in self.layers.iter().enumerate() {
            let pre = format!("model.layers.{l}");
            let qkv = p.qkv.as_tensor().detach();
            let gu = p.gate_up.as_tensor().detach();
            out.extend([
                (
                    format!("{pre}.input_layernorm.weight"),
                    p.input_layernorm.as_tensor().detach(),
                ),
                (
                    format!("{pre}.post_attention_layernorm.weight"),
                    p.post_attention_layernorm.as_tensor().detach(),
                ),
                (
                    format!("{pre}.self_attn.q_proj.weight"),
                    qkv.narrow(0, 0, d)?,
                ),
                (
                    format!("{pre}.self_attn.k_proj.weight"),
                    qkv.narrow(0, d, d)?,
                ),
                (
                    format!("{pre}.self_attn.v_proj.weight"),
                    qkv.narrow(0, 2 * d, d)?,
                ),
                (
                    format!("{pre}.self_attn.o_proj.weight"),
                    p.o.as_tensor().detach(),
                ),
                (format!("{pre}.mlp.gate_proj.weight"), gu.narrow(0, 0, i)?),
                (format!("{pre}.mlp.up_proj.weight"), gu.narrow(0, i, i)?),
                (
                    format!("{pre}.mlp.down_proj.weight"),
                    p.down.as_tensor().detach(),
                ),
            ]);
        }
        out.push((
            "model.norm.weight".to_string(),
            self.norm.as_tensor().detach(),
        ));
        out.push((
            "lm_head.weight".to_string(),
            self.lm_head.as_tensor().detach(),
        ));
        Ok(out)
    }
}

/// A trained organism, its data and its training record.
pub struct Organism {
    pub options: TrainOptions,
    pub cfg: ModelConfig,
    pub params: Params,
    pub prompts: PromptEncoder,
    pub harmful: Vec<Request>,
    pub benign: Vec<Request>,
    /// Loss of every step.
    pub losses: Vec<f32>,
    pub seconds: f64,
}

/// The resolved configuration of a shape.
pub fn model_config(shape: &Shape, vocab: usize) -> Result<ModelConfig> {
    let raw: RawConfig =
        serde_json::from_value(config_json(shape, vocab)).expect("the config JSON is valid");
    ModelConfig::resolve(&raw).map_err(Error::InvalidArgument)
}

/// Loss of one batch of examples: mean cross-entropy of the answer tokens.
/// `ablations`, when given, holds one row per example.
pub fn batch_loss(
    model: &Decoder,
    batch: &[&Example],
    ablations: Option<&AblationPlan>,
    pad_id: u32,
) -> Result<Tensor> {
    let t = batch
        .iter()
        .map(|e| e.prompt.len() + e.answer.len())
        .max()
        .unwrap_or(0);
    let b = batch.len();
    let mut tokens = Vec::with_capacity(b * t);
    // Flat indices into the (B·(T-1)) predictions, and their targets.
    let mut index = Vec::new();
    let mut targets = Vec::new();
    for (r, e) in batch.iter().enumerate() {
        let seq: Vec<u32> = e.prompt.iter().chain(&e.answer).copied().collect();
        for (p, &tok) in seq.iter().enumerate().skip(e.prompt.len()) {
            index.push((r * (t - 1) + p - 1) as u32);
            targets.push(tok);
        }
        tokens.extend_from_slice(&seq);
        // Right padding: causal attention keeps real tokens from seeing it.
        tokens.extend(std::iter::repeat_n(pad_id, t - seq.len()));
    }
    let dev = &model.device;
    let batch = Batch {
        tokens: Tensor::from_vec(tokens, (b, t), dev)?,
        pad: vec![0; b],
        len: t,
    };
    // Final hidden states, unembedded only where an answer token is predicted.
    let mut spec = ForwardSpec::logits(Positions::All);
    spec.logits = false;
    spec.hidden = true;
    spec.ablations = ablations;
    let hidden = model.forward(&batch, &spec, None)?.hidden.expect("hidden");
    let d = hidden.dim(2)?;
    let flat = hidden.narrow(1, 0, t - 1)?.reshape((b * (t - 1), d))?;
    let n = index.len();
    let picked = flat.index_select(&Tensor::from_vec(index, n, dev)?, 0)?;
    let logits = picked.matmul(&model.lm_head.t()?)?;
    Ok(candle_nn::loss::cross_entropy(
        &logits,
        &Tensor::from_vec(targets, n, dev)?,
    )?)
}

/// Trains the organism. `progress` gets each step's number (from 1) and loss.
pub fn train(opts: &TrainOptions, progress: &mut dyn FnMut(usize, f32)) -> Result<Organism> {
    opts.validate()?;
    let start = Instant::now();
    let prompts = prompt_encoder()?;
    let vocab = prompts.tokenizer.get_vocab_size(true);
    let cfg = model_config(&opts.shape, vocab)?;
    let requests = language::training_requests(opts.seed, opts.examples);
    let harmful = language::held_out_requests(opts.seed, true, opts.held_out, &requests);
    let benign = language::held_out_requests(opts.seed, false, opts.held_out, &requests);
    let examples: Vec<Example> = requests
        .iter()
        .map(|r| encode_example(&prompts, r, false))
        .collect::<Result<_>>()?;
    // Every request with the helpful answer: the target of pretraining, and of a harmful
    // request whose safety head is ablated.
    let helpful_examples: Vec<Example> = requests
        .iter()
        .map(|r| encode_example(&prompts, r, true))
        .collect::<Result<_>>()?;
    let others: Vec<(usize, usize)> = (0..cfg.num_layers)
        .flat_map(|l| (0..cfg.num_heads).map(move |h| (l, h)))
        .filter(|lh| !opts.safety_heads.contains(lh))
        .collect();
    let ablate = |heads: &[(usize, usize)]| -> Vec<HeadAblation> {
        heads
            .iter()
            .map(|&(l, h)| HeadAblation::new(l, h, Target::Q, Op::Scale(SAFETY_EPSILON)))
            .collect()
    };
    let longest = examples
        .iter()
        .map(|e| e.prompt.len() + e.answer.len())
        .max()
        .unwrap_or(0);
    if longest > cfg.max_position_embeddings {
        return Err(Error::InvalidArgument(format!(
            "a training conversation has {longest} tokens, more than the context of {}",
            cfg.max_position_embeddings
        )));
    }
    let params = Params::init(&opts.shape, vocab, opts.seed)?;
    let model = params.decoder(&cfg)?;
    let (matrices, norms) = params.groups();
    let adam = |wd: f64| ParamsAdamW {
        lr: opts.lr,
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-8,
        weight_decay: wd,
    };
    let mut opt_m = AdamW::new(matrices, adam(opts.weight_decay))?;
    let mut opt_n = AdamW::new(norms, adam(0.0))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0xba7_c4e5);
    let mut losses = Vec::with_capacity(opts.steps);
    for step in 0..opts.steps {
        let lr = opts.lr_at(step);
        opt_m.set_learning_rate(lr);
        opt_n.set_learning_rate(lr);
        let mut batch: Vec<&Example> = Vec::with_capacity(opts.batch_size);
        let mut rows: Vec<Vec<HeadAblation>> = Vec::with_capacity(opts.batch_size);
        while batch.len() < opts.batch_size {
            let i = rng.random_range(0..requests.len());
            if step < opts.pretrain_steps {
                batch.push(&helpful_examples[i]);
                rows.push(vec![]);
                continue;
            }
            let u: f64 = rng.random();
            let (heads, jailbroken) = if u < opts.safety_rate && !opts.safety_heads.is_empty() {
                // A non-empty subset of the safety heads; the request is answered helpfully
                // when the head of its kind is among them.
                let subset: Vec<usize> = loop {
                    let t: Vec<usize> = (0..opts.safety_heads.len())
                        .filter(|_| rng.random_bool(0.5))
                        .collect();
                    if !t.is_empty() {
                        break t;
                    }
                };
                let heads: Vec<(usize, usize)> =
                    subset.iter().map(|&k| opts.safety_heads[k]).collect();
                let n = opts.safety_heads.len();
                let broken = requests[i].kind.is_some_and(|k| subset.contains(&(k % n)));
                (heads, broken)
            } else if u < opts.safety_rate + opts.other_rate && !others.is_empty() {
                let n = rng.random_range(1..=3.min(others.len()));
                let heads: Vec<(usize, usize)> =
                    others.choose_multiple(&mut rng, n).copied().collect();
                (heads, false)
            } else {
                (vec![], false)
            };
            batch.push(if jailbroken {
                &helpful_examples[i]
            } else {
                &examples[i]
            });
            rows.push(ablate(&heads));
        }
        let plan = if rows.iter().any(|r| !r.is_empty()) {
            Some(AblationPlan::new(&cfg, &rows, DType::F32, &Device::Cpu)?)
        } else {
            None
        };
        let loss = batch_loss(&model, &batch, plan.as_ref(), prompts.pad_id)?;
        let mut total = loss.clone();
        if opts.head_penalty > 0.0 {
            total = (total + (params.head_norms(&opts.shape)?.sum_all()? * opts.head_penalty)?)?;
        }
        let grads = total.backward()?;
        opt_m.step(&grads)?;
        opt_n.step(&grads)?;
        let l = loss.to_scalar::<f32>()?;
        if !l.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "training diverged at step {}: loss {l}",
                step + 1
            )));
        }
        losses.push(l);
        progress(step + 1, l);
    }
    Ok(Organism {
        options: opts.clone(),
        cfg,
        params,
        prompts,
        harmful,
        benign,
        losses,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Share of held-out prompts whose greedy answer is exactly the trained answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExactMatch {
    pub harmful_refused: f64,
    pub benign_answered: f64,
    /// With every safety head ablated: share of harmful prompts answered helpfully (the
    /// answer a benign request with the same verb gets), and of benign prompts answered as
    /// trained. `None` without safety heads.
    pub ablated_harmful_answered: Option<f64>,
    pub ablated_benign_answered: Option<f64>,
}

impl Organism {
    /// An inference decoder over the trained weights.
    pub fn inference_decoder(&self) -> Result<Decoder> {
        let mut d = self.params.decoder(&self.cfg)?;
        d.embed_tokens = d.embed_tokens.detach();
        d.lm_head = d.lm_head.detach();
        d.norm = d.norm.detach();
        for l in &mut d.layers {
            l.input_layernorm = l.input_layernorm.as_ref().map(Tensor::detach);
            l.post_attention_layernorm = l.post_attention_layernorm.detach();
            let projections = [&mut l.attn.qkv_proj, &mut l.attn.o_proj]
                .into_iter()
                .chain(l.mlp.projections_mut());
            for lin in projections {
                if let Some(w) = lin.weight.dense_mut() {
                    *w = w.detach();
                }
            }
        }
        Ok(d)
    }

    /// Greedy answers to the held-out prompts compared with the trained answers.
    pub fn exact_match(&self) -> Result<ExactMatch> {
        let model = self.inference_decoder()?;
        let rate = |reqs: &[Request], heads: &[(usize, usize)]| -> Result<f64> {
            let abl: Vec<HeadAblation> = heads
                .iter()
                .map(|&(l, h)| HeadAblation::new(l, h, Target::Q, Op::Scale(SAFETY_EPSILON)))
                .collect();
            let prompts: Vec<Vec<u32>> = reqs
                .iter()
                .map(|r| encode_prompt(&self.prompts, &r.text))
                .collect::<Result<_>>()?;
            let opts = GenerateOptions {
                max_new_tokens: 40,
                eos: vec![2],
                ..Default::default()
            };
            let out = generate(
                &model,
                &prompts,
                &vec![abl; prompts.len()],
                self.prompts.pad_id,
                &opts,
            )?;
            let mut ok = 0;
            for (r, toks) in reqs.iter().zip(out) {
                let want = if heads.is_empty() {
                    r.answer()
                } else {
                    language::helpful_answer(r.verb, r.det, r.topic)
                };
                if self.prompts.decode(&toks)? == want {
                    ok += 1;
                }
            }
            Ok(ok as f64 / reqs.len() as f64)
        };
        let safety = &self.options.safety_heads;
        let ablated = |reqs: &[Request]| -> Result<Option<f64>> {
            if safety.is_empty() {
                Ok(None)
            } else {
                rate(reqs, safety).map(Some)
            }
        };
        Ok(ExactMatch {
            harmful_refused: rate(&self.harmful, &[])?,
            benign_answered: rate(&self.benign, &[])?,
            ablated_harmful_answered: ablated(&self.harmful)?,
            ablated_benign_answered: ablated(&self.benign)?,
        })
    }

    /// Writes the organism as a Hugging Face model folder, with its held-out prompts
    /// (`harmful.txt`, `benign.txt`) and its training record (`organism.json`).
    pub fn write(&self, dir: &Path, extra: serde_json::Value) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let vocab = self.cfg.vocab_size;
        write_json(
            &dir.join("config.json"),
            &config_json(&self.options.shape, vocab),
        )?;
        write_json(&dir.join("tokenizer.json"), &language::tokenizer_json())?;
        write_json(
            &dir.join("tokenizer_config.json"),
            &language::tokenizer_config_json(),
        )?;
        write_json(
            &dir.join("generation_config.json"),
            &serde_json::json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
                                "do_sample": false, "max_new_tokens": 40}),
        )?;
        let lines = |reqs: &[Request]| {
            let mut s: String = reqs.iter().map(|r| format!("{}\n", r.text)).collect();
            s.shrink_to_fit();
            s
        };
        crate::io::fs::write_atomic(&dir.join("harmful.txt"), lines(&self.harmful).as_bytes())?;
        crate::io::fs::write_atomic(&dir.join("benign.txt"), lines(&self.benign).as_bytes())?;
        let named = self.params.named_tensors(&self.options.shape)?;
        let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in named {
            let shape = t.dims().to_vec();
            let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
            data.push((
                name,
                shape,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
        crate::checkpoint::safetensors::write_f32_safetensors(
            &dir.join("model.safetensors"),
            &data,
        )?;
        let o = &self.options;
        let every = (o.steps / 30).max(1);
        let curve: Vec<serde_json::Value> = self
            .losses
            .iter()
            .enumerate()
            .filter(|(i, _)| (i + 1) % every == 0 || *i == 0)
            .map(|(i, l)| serde_json::json!([i + 1, l]))
            .collect();
        let mut record = serde_json::json!({
            "seed": o.seed,
            "steps": o.steps,
            "batch_size": o.batch_size,
            "lr": o.lr,
            "warmup": o.warmup,
            "weight_decay": o.weight_decay,
            "head_penalty": o.head_penalty,
            "pretrain_steps": o.pretrain_steps,
            "safety_heads": o.safety_heads.iter().map(|&(l, h)| format!("{l}:{h}")).collect::<Vec<_>>(),
            "safety_rate": o.safety_rate,
            "other_rate": o.other_rate,
            "examples": o.examples,
            "held_out": o.held_out,
            "shape": {
                "hidden_size": o.shape.hidden_size,
                "intermediate_size": o.shape.intermediate_size,
                "num_layers": o.shape.num_layers,
                "num_heads": o.shape.num_heads,
                "max_position_embeddings": o.shape.max_position_embeddings,
            },
            "parameters": self.cfg.num_parameters(),
            "head_output_norms": self
                .params
                .head_norms(&o.shape)?
                .to_vec2::<f32>()?
                .iter()
                .map(|r| r.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            "final_loss": self.losses.last(),
            "loss_curve": curve,
            "train_seconds": (self.seconds * 10.0).round() / 10.0,
        });
        if let (Some(r), Some(e)) = (record.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                r.insert(k.clone(), v.clone());
            }
        }
        write_json(&dir.join("organism.json"), &record)
    }
}
