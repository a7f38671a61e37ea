//! CPU kernels for the hot float32 operations of the decoder.
//!
//! Each kernel answers `None` when it does not apply (another device, another dtype, a
//! layout it does not take), and the caller then runs the generic candle operations, which
//! stay the reference: the tests below check that both give the same values.

use candle_core::{CpuStorage, DType, Storage, Tensor};

use crate::error::Result;
use crate::model::config::Activation;

/// Output columns per thread are a multiple of this (the row count of gemm's AVX-512 f32
/// microkernel), so that no thread runs a ragged tile in the middle of the output.
const COLUMN_ALIGN: usize = 64;

/// A raw pointer that may cross to rayon's threads; each thread touches a disjoint region.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for disjoint writes (or shared reads) inside one call, see its uses.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A float32 tensor on CPU that records no gradients: what every kernel here takes (they
/// record no backward op, so tensors that track ops keep candle's path).
fn plain_f32_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op()
}

/// `x Wᵀ + b` for float32 tensors on CPU that record no gradients. x: (m, k) contiguous,
/// W: (n, k) with any strides (a transposed view of a row-major (k, n) matrix is the fast
/// case), b: (n,) contiguous. Returns (m, n).
///
/// One `gemm` call writes straight into uninitialised memory; candle's own matmul first
/// zero-fills its output, a memory pass as large as the result. With a bias, every row of the
/// output starts as b and the product is accumulated into it (no separate broadcast add).
pub fn linear_f32(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    if !plain_f32_cpu(x)
        || !plain_f32_cpu(w)
        || !b.is_none_or(|b| plain_f32_cpu(b) && b.is_contiguous())
    {
        return Ok(None);
    }
    let (Ok((m, k)), Ok((n, k2))) = (x.dims2(), w.dims2()) else {
        return Ok(None);
    };
    if k != k2 || m == 0 || n == 0 || k == 0 || !x.is_contiguous() {
        return Ok(None);
    }
    if b.is_some_and(|b| b.dims() != [n]) {
        return Ok(None);
    }
    let (x_storage, x_layout) = x.storage_and_layout();
    let (w_storage, w_layout) = w.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(xd)), Storage::Cpu(CpuStorage::F32(wd))) =
        (&*x_storage, &*w_storage)
    else {
        return Ok(None);
    };
    let xs = &xd[x_layout.start_offset()..x_layout.start_offset() + m * k];
    let (w_rs, w_cs) = (w_layout.stride()[0], w_layout.stride()[1]);
    // Highest element W reads, to check the slice before handing out a raw pointer.
    let w_last = w_layout.start_offset() + (n - 1) * w_rs + (k - 1) * w_cs;
    if w_last >= wd.len() {
        return Ok(None);
    }
    let ws = &wd[w_layout.start_offset()..];

    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let read_dst = match b {
        Some(b) => {
            let (b_storage, b_layout) = b.storage_and_layout();
            let Storage::Cpu(CpuStorage::F32(bd)) = &*b_storage else {
                return Ok(None);
            };
            let bias = &bd[b_layout.start_offset()..b_layout.start_offset() + n];
            for row in out.spare_capacity_mut()[..m * n].chunks_exact_mut(n) {
                for (o, &v) in row.iter_mut().zip(bias) {
                    o.write(v);
                }
            }
            true
        }
        None => false,
    };
    // The threads split the output columns (rows of W) between them, each running a
    // single-threaded gemm on its own slice of W: gemm's own threading splits the rows of x
    // instead, and then every thread repacks all of W (measured: 3–8% slower on 512-row
    // inputs).
    let threads = candle_core::utils::get_num_threads().max(1);
    let chunk = n.div_ceil(threads).next_multiple_of(COLUMN_ALIGN).min(n);
    let dst = SendPtr(out.spare_capacity_mut().as_mut_ptr() as *mut f32);
    let (xp, wp) = (
        SendPtr(xs.as_ptr() as *mut f32),
        SendPtr(ws.as_ptr() as *mut f32),
    );
    let block = |j0: usize| {
        let nj = chunk.min(n - j0);
        // SAFETY: dst has capacity m*n and this call writes columns j0..j0+nj of every row
        // (row stride n, column stride 1), a region no other call writes; when read_dst is
        // set every element was written above. lhs is the (m, k) row-major slice xs;
        // rhs(i, j) = W(j0 + j, i) lies at ws[(j0 + j)*w_rs + i*w_cs], inside ws (checked
        // through w_last). The storage guards keep the inputs alive and unchanged.
        unsafe {
            gemm::gemm(
                m,
                nj,
                k,
                dst.get().add(j0),
                1,
                n as isize,
                read_dst,
                xp.get(),
                1,
                k as isize,
                wp.get().add(j0 * w_rs),
                w_rs as isize,
                w_cs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    };
    let starts: Vec<usize> = (0..n).step_by(chunk).collect();
    if starts.len() == 1 {
        block(0);
    } else {
        use rayon::prelude::*;
        starts.into_par_iter().for_each(block);
    }
    // SAFETY: the blocks above wrote all m*n elements.
    unsafe { out.set_len(m * n) };
    drop((x_storage, w_storage));
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?))
}

/// The f32 contents of a contiguous CPU tensor, from its first element.
fn cpu_f32_slice(
    storage: &Storage,
    layout: &candle_core::Layout,
    len: usize,
) -> Option<*const f32> {
    match storage {
        Storage::Cpu(CpuStorage::F32(d)) if layout.start_offset() + len <= d.len() => {
            Some(d[layout.start_offset()..].as_ptr())
        }
        _ => None,
    }
}

/// Scaled dot-product attention for float32 tensors on CPU, grouped-query aware:
/// `softmax(cap(q kᵀ · scale) + mask) v` per query head, where query head h reads key/value
/// head h / (H / G) and `cap(s) = c · tanh(s / c)` when `softcap` is set. With `sinks`
/// ((B, H) f32 contiguous: a logit per row and head, −∞ for none), each softmax also has the
/// sink's logit, whose probability goes to no value (GPT-OSS).
///
/// q: (B, H, Tq, D) contiguous; k and v: (B, G, S, D) whose rows are contiguous, with any
/// other strides (views of the fused q/k/v projection's output or of a key/value cache's
/// larger buffers qualify); mask: (1 or B, 1, Tq, S) additive,
/// contiguous. Returns z: (B, Tq, H, D), the layout `o_proj` reads, so no transposition
/// follows. The (batch row, head) pairs run in parallel, each with its own score matrix; the
/// two products are single-threaded gemm calls and the softmax is candle's (max, exp, sum,
/// divide), so the values match the generic path up to the order of float sums.
pub fn attention_f32(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    softcap: Option<f64>,
    mask: Option<&Tensor>,
    sinks: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let contiguous = |t: &Tensor| plain_f32_cpu(t) && t.is_contiguous();
    // (S, D) blocks of rows each contiguous: strides (·, ·, any, 1).
    let blocks = |t: &Tensor| plain_f32_cpu(t) && t.rank() == 4 && t.stride()[3] == 1;
    if !contiguous(q) || !blocks(k) || !blocks(v) || !mask.is_none_or(contiguous) {
        return Ok(None);
    }
    // (B, H) sink logits, read to the host once.
    let sinks: Option<Vec<f32>> = match sinks {
        Some(t) if t.dims() == [q.dim(0)?, q.dim(1)?] && plain_f32_cpu(t) => {
            Some(t.flatten_all()?.to_vec1()?)
        }
        Some(_) => return Ok(None),
        None => None,
    };
    let (Ok((b, h, tq, d)), Ok((bk, g, s, dk))) = (q.dims4(), k.dims4()) else {
        return Ok(None);
    };
    if v.dims() != [bk, g, s, dk] || bk != b || dk != d || g == 0 || h % g != 0 {
        return Ok(None);
    }
    if b * h * tq * d * s == 0 {
        return Ok(None);
    }
    let mask_rows = match mask {
        Some(m) => match m.dims4() {
            Ok((mb, 1, mt, ms)) if (mb == 1 || mb == b) && mt == tq && ms == s => mb,
            _ => return Ok(None),
        },
        None => 0,
    };
    let rep = h / g;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    // Element span of k and v from their first element: the last block's last row ends it.
    let span = |st: &[usize]| (b - 1) * st[0] + (g - 1) * st[1] + (s - 1) * st[2] + d;
    let (k_st, v_st) = (kl.stride().to_vec(), vl.stride().to_vec());
    // Row strides of the (S, D) blocks: D for contiguous keys and values, more for views of
    // the fused projection's output or of a cache's buffers.
    let (k_row, v_row) = (k_st[2] as isize, v_st[2] as isize);
    let (Some(qp), Some(kp), Some(vp)) = (
        cpu_f32_slice(&qs, ql, q.elem_count()),
        cpu_f32_slice(&ks, kl, span(&k_st)),
        cpu_f32_slice(&vs, vl, span(&v_st)),
    ) else {
        return Ok(None);
    };
    let mask_guard = mask.map(|m| m.storage_and_layout());
    let mp = match &mask_guard {
        Some((ms, ml)) => match cpu_f32_slice(ms, ml, mask_rows * tq * s) {
            Some(p) => Some(SendPtr(p as *mut f32)),
            None => return Ok(None),
        },
        None => None,
    };
    let (qp, kp, vp) = (
        SendPtr(qp as *mut f32),
        SendPtr(kp as *mut f32),
        SendPtr(vp as *mut f32),
    );
    let mut out: Vec<f32> = Vec::with_capacity(b * tq * h * d);
    let zp = SendPtr(out.spare_capacity_mut().as_mut_ptr() as *mut f32);
    let task = |bh: usize| {
        let (bi, hi) = (bh / h, bh % h);
        let gi = hi / rep;
        // (Tq, S) scores of this row and head.
        let mut scores = vec![0f32; tq * s];
        // SAFETY: q's block (bi, hi) is the (Tq, D) row-major matrix at (bi*H + hi)*Tq*D, k's
        // and v's block (bi, gi) the (S, D) matrices at bi*st[0] + gi*st[1] with row stride
        // st[2], all inside their storage (spans checked); kᵀ is read with row stride 1 and
        // column stride k's st[2]. The storage guards keep them alive and unchanged.
        unsafe {
            gemm::gemm(
                tq,
                s,
                d,
                scores.as_mut_ptr(),
                1,
                s as isize,
                false,
                qp.get().add((bi * h + hi) * tq * d),
                1,
                d as isize,
                kp.get().add(bi * k_st[0] + gi * k_st[1]),
                k_row,
                1,
                0.0,
                scale as f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let mask_block = mp.map(|m| {
            let row = if mask_rows == 1 { 0 } else { bi };
            // SAFETY: row < mask_rows and the mask holds mask_rows*Tq*S elements.
            unsafe { std::slice::from_raw_parts(m.get().add(row * tq * s), tq * s) }
        });
        let sink = sinks.as_ref().map(|v| v[bh]);
        for (i, row) in scores.chunks_exact_mut(s).enumerate() {
            if let Some(c) = softcap {
                let c = c as f32;
                for x in row.iter_mut() {
                    *x = (*x / c).tanh() * c;
                }
            }
            if let Some(m) = mask_block {
                for (x, &m) in row.iter_mut().zip(&m[i * s..(i + 1) * s]) {
                    *x += m;
                }
            }
            let mut max = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            if let Some(s) = sink {
                max = max.max(s);
            }
            let mut sum = 0f32;
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            if let Some(s) = sink {
                // The sink's share: in the sum, with no value of its own.
                sum += (s - max).exp();
            }
            for x in row.iter_mut() {
                *x /= sum;
            }
        }
        // SAFETY: z's rows (bi, t, hi, ·) for t in 0..Tq lie at ((bi*Tq + t)*H + hi)*D, row
        // stride H*D: disjoint for distinct (bi, hi) and inside the capacity B*Tq*H*D.
        unsafe {
            gemm::gemm(
                tq,
                d,
                s,
                zp.get().add(bi * tq * h * d + hi * d),
                1,
                (h * d) as isize,
                false,
                scores.as_ptr(),
                1,
                s as isize,
                vp.get().add(bi * v_st[0] + gi * v_st[1]),
                1,
                v_row,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    };
    {
        use rayon::prelude::*;
        (0..b * h).into_par_iter().for_each(task);
    }
    // SAFETY: the tasks wrote every (bi, t, hi, ·) row, i.e. all B*Tq*H*D elements.
    unsafe { out.set_len(b * tq * h * d) };
    drop((qs, ks, vs, mask_guard));
    Ok(Some(Tensor::from_vec(out, (b, tq, h, d), q.device())?))
}

/// A copy of a float32 CPU tensor in memory that the kernel is asked to back with 2 MiB
/// pages (Linux transparent huge pages, `madvise`): the matrix product reads a weight matrix
/// in panels whose rows lie a whole row of the matrix apart, one 4 KiB page each, and huge
/// pages spare those translation misses. Other tensors, and other systems, are returned as
/// they are (contiguous).
pub fn weight_copy(t: &Tensor) -> Result<Tensor> {
    if !plain_f32_cpu(t) {
        return Ok(t.contiguous()?);
    }
    let mut out: Vec<f32> = Vec::with_capacity(t.elem_count());
    advise_huge_pages(out.spare_capacity_mut());
    strided_copy(t, &mut out);
    // Memory the allocator hands back from earlier buffers is already backed by small pages:
    // ask for those to be collapsed too (Linux 6.1 and later; ignored elsewhere).
    collapse_huge_pages(&mut out);
    Ok(Tensor::from_vec(out, t.shape(), t.device())?)
}

/// A contiguous copy of a float32 CPU tensor with any strides (a transposed view, a narrowed
/// slice), its rows copied in parallel; `None` for other tensors. candle's own copy runs on
/// one thread.
pub fn contiguous_f32(t: &Tensor) -> Result<Option<Tensor>> {
    if !plain_f32_cpu(t) || t.rank() == 0 {
        return Ok(None);
    }
    if t.is_contiguous() {
        return Ok(Some(t.clone()));
    }
    let mut out: Vec<f32> = Vec::with_capacity(t.elem_count());
    strided_copy(t, &mut out);
    Ok(Some(Tensor::from_vec(out, t.shape(), t.device())?))
}

/// Fills the empty `out` (capacity at least t's element count) with t's elements in
/// row-major order. t: float32 on CPU.
fn strided_copy(t: &Tensor, out: &mut Vec<f32>) {
    use rayon::prelude::*;
    let n = t.elem_count();
    let dims = t.dims().to_vec();
    let last = *dims.last().unwrap_or(&1);
    if n == 0 {
        return;
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(src)) = &*storage else {
        unreachable!("checked by the callers: a float32 CPU tensor");
    };
    let strides = layout.stride().to_vec();
    let s_last = *strides.last().unwrap_or(&1);
    let offset = layout.start_offset();
    if dims.len() == 2 && strides == [1, dims[0]] && dims[0] > 1 {
        // The transpose of a contiguous (c, r) matrix, as every weight is stored at load:
        // copied in tiles of TILE × TILE, so that each run read from the source (TILE values
        // of one of its rows) is used whole instead of one value per cache line.
        const TILE: usize = 32;
        let (r, c) = (dims[0], dims[1]);
        out.spare_capacity_mut()[..n]
            .par_chunks_mut(TILE * c)
            .enumerate()
            .for_each(|(block, chunk)| {
                let i0 = block * TILE;
                let rows = chunk.len() / c;
                for j0 in (0..c).step_by(TILE) {
                    for j in j0..(j0 + TILE).min(c) {
                        // Output rows i0..i0+rows of column j: the source's row j, contiguous.
                        let at = offset + j * r + i0;
                        for (ii, &v) in src[at..at + rows].iter().enumerate() {
                            chunk[ii * c + j].write(v);
                        }
                    }
                }
            });
        // SAFETY: the chunks cover out[..n] (r rows of c) and every element was written.
        unsafe { out.set_len(n) };
        return;
    }
    // Rows (all dims but the last) in parallel, in blocks of about 16 KiB.
    let rows_per_block = (4096 / last).max(1);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(rows_per_block * last)
        .enumerate()
        .for_each(|(block, chunk)| {
            for (r, row) in chunk.chunks_mut(last).enumerate() {
                // Source offset of this row: its multi-index over dims[..rank-1].
                let mut idx = block * rows_per_block + r;
                let mut at = offset;
                for (&dim, &stride) in dims[..dims.len() - 1].iter().zip(&strides).rev() {
                    at += (idx % dim) * stride;
                    idx /= dim;
                }
                if s_last == 1 {
                    for (o, &v) in row.iter_mut().zip(&src[at..at + last]) {
                        o.write(v);
                    }
                } else {
                    for (j, o) in row.iter_mut().enumerate() {
                        o.write(src[at + j * s_last]);
                    }
                }
            }
        });
    // SAFETY: the chunks cover out[..n] and every element was written above.
    unsafe { out.set_len(n) };
}

/// The whole 2 MiB blocks inside a buffer, as an address range.
#[cfg(target_os = "linux")]
fn huge_blocks(start: *const u8, bytes: usize) -> Option<(usize, usize)> {
    const HUGE: usize = 2 << 20;
    let start = start as usize;
    let (a, b) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
    // Lazily: `b - a` overflows when the buffer holds no whole block.
    (b > a).then(|| (a, b - a))
}

/// Asks the kernel for 2 MiB pages over the whole 2 MiB blocks of a not yet touched buffer.
fn advise_huge_pages<T>(buf: &mut [T]) {
    #[cfg(target_os = "linux")]
    if let Some((a, len)) = huge_blocks(buf.as_ptr() as *const u8, std::mem::size_of_val(buf)) {
        // SAFETY: the range lies inside `buf`, memory this process owns; MADV_HUGEPAGE only
        // changes how the kernel backs the pages, never their contents.
        unsafe {
            libc::madvise(a as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// Asks the kernel to move the whole 2 MiB blocks of a filled buffer onto 2 MiB pages now.
fn collapse_huge_pages<T>(buf: &mut [T]) {
    #[cfg(target_os = "linux")]
    if let Some((a, len)) = huge_blocks(buf.as_ptr() as *const u8, std::mem::size_of_val(buf)) {
        /// `MADV_COLLAPSE` (Linux 6.1); older kernels answer EINVAL, which is ignored.
        const MADV_COLLAPSE: libc::c_int = 25;
        // SAFETY: as in advise_huge_pages; a collapse copies the contents unchanged.
        unsafe {
            libc::madvise(a as *mut libc::c_void, len, MADV_COLLAPSE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// Rotary embedding, halves rotated, of x (B, n, T, D) with any strides whose last one is 1
/// (a transposed view of the fused q/k/v projection's output qualifies), and cos/sin
/// (B, T, D/2) contiguous: the contiguous (B, n, T, D) result in one pass, written without
/// zero-filling, each element computed as candle's CPU kernel computes it (the same values,
/// bit for bit). `None` where it does not apply.
pub fn rope_f32(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    use rayon::prelude::*;
    let tables = |t: &Tensor| plain_f32_cpu(t) && t.is_contiguous();
    if !plain_f32_cpu(x) || !tables(cos) || !tables(sin) || x.rank() != 4 {
        return Ok(None);
    }
    let (b, n, t, d) = x.dims4()?;
    let st = x.stride().to_vec();
    let half = d / 2;
    if st[3] != 1 || d % 2 != 0 || cos.dims() != [b, t, half] || sin.dims() != [b, t, half] {
        return Ok(None);
    }
    if b * n * t * d == 0 {
        return Ok(None);
    }
    let (xs, xl) = x.storage_and_layout();
    let (cs, cl) = cos.storage_and_layout();
    let (ss, sl) = sin.storage_and_layout();
    let span = (b - 1) * st[0] + (n - 1) * st[1] + (t - 1) * st[2] + d;
    let (Some(xp), Some(cp), Some(sp)) = (
        cpu_f32_slice(&xs, xl, span),
        cpu_f32_slice(&cs, cl, b * t * half),
        cpu_f32_slice(&ss, sl, b * t * half),
    ) else {
        return Ok(None);
    };
    let (xp, cp, sp) = (
        SendPtr(xp as *mut f32),
        SendPtr(cp as *mut f32),
        SendPtr(sp as *mut f32),
    );
    let mut out: Vec<f32> = Vec::with_capacity(b * n * t * d);
    out.spare_capacity_mut()[..b * n * t * d]
        .par_chunks_mut(t * d)
        .enumerate()
        .for_each(|(bn, dst)| {
            let (bi, ni) = (bn / n, bn % n);
            for (ti, row) in dst.chunks_exact_mut(d).enumerate() {
                // SAFETY: row (bi, ni, ti) of x lies at bi*st0 + ni*st1 + ti*st2, D elements with
                // stride 1, inside the span checked above; the tables' row (bi, ti) holds D/2
                // elements inside their B*T*D/2. The storage guards keep them alive.
                let (src, c, s) = unsafe {
                    (
                        std::slice::from_raw_parts(
                            xp.get().add(bi * st[0] + ni * st[1] + ti * st[2]),
                            d,
                        ),
                        std::slice::from_raw_parts(cp.get().add((bi * t + ti) * half), half),
                        std::slice::from_raw_parts(sp.get().add((bi * t + ti) * half), half),
                    )
                };
                let (x1, x2) = src.split_at(half);
                let (o1, o2) = row.split_at_mut(half);
                for i in 0..half {
                    o1[i].write(x1[i] * c[i] - x2[i] * s[i]);
                    o2[i].write(x1[i] * s[i] + x2[i] * c[i]);
                }
            }
        });
    // SAFETY: the chunks cover all B*n*T*D elements and each row was written above.
    unsafe { out.set_len(b * n * t * d) };
    drop((xs, cs, ss));
    Ok(Some(Tensor::from_vec(out, (b, n, t, d), x.device())?))
}

/// `act(gate) * up` where `x` (..., 2I) holds `[gate | up]` in its last dimension:
/// (..., 2I) -> (..., I), in one pass over contiguous float32 CPU memory, written without
/// zero-filling. `None` where it does not apply.
pub fn gated_activation_f32(x: &Tensor, inter: usize, act: Activation) -> Result<Option<Tensor>> {
    let mut shape = x.dims().to_vec();
    let last = shape.len() - 1;
    if plain_f32_cpu(x) && x.is_contiguous() {
        use rayon::prelude::*;
        let (storage, layout) = x.storage_and_layout();
        if let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage {
            let start = layout.start_offset();
            let src = &data[start..start + x.elem_count()];
            // Written once, never zero-filled first.
            let len = src.len() / 2;
            let mut out: Vec<f32> = Vec::with_capacity(len);
            out.spare_capacity_mut()[..len]
                .par_chunks_mut(inter)
                .zip(src.par_chunks(2 * inter))
                .for_each(|(o, row)| {
                    let (gate, up) = row.split_at(inter);
                    match act {
                        Activation::Silu => {
                            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                                o.write(g / (1.0 + (-g).exp()) * u);
                            }
                        }
                        Activation::GeluTanh => {
                            // 0.5 g (1 + tanh(√(2/π) (g + 0.044715 g³))), as PyTorch.
                            const C: f32 = 0.797_884_6;
                            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                                let inner = C * (g + 0.044715 * g * g * g);
                                o.write(0.5 * g * (1.0 + inner.tanh()) * u);
                            }
                        }
                        Activation::ClampedSwiglu { alpha, limit } => {
                            // (g σ(αg)) (u + 1), g = min(gate, limit), u = clamp(up, ±limit).
                            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                                let g = g.min(limit);
                                let u = u.clamp(-limit, limit);
                                o.write(g / (1.0 + (-alpha * g).exp()) * (u + 1.0));
                            }
                        }
                    }
                });
            // SAFETY: the chunks cover all `len` elements (len = rows × inter, since src holds
            // rows × 2·inter values) and each was written above.
            unsafe { out.set_len(len) };
            drop(storage);
            shape[last] = inter;
            return Ok(Some(Tensor::from_vec(out, shape, x.device())?));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Found by the gguf fuzz target (fuzz/corpus/gguf/seed-llama-bpe) in a build with
    /// overflow checks: copying any weight smaller than a 2 MiB block panicked.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_buffer_without_a_whole_huge_block_has_none() {
        const HUGE: usize = 2 << 20;
        let at = |addr: usize| addr as *const u8;
        assert_eq!(huge_blocks(at(HUGE + 16), 1024), None);
        assert_eq!(huge_blocks(at(HUGE - 16), 32), None);
        assert_eq!(huge_blocks(at(16), 0), None);
        assert_eq!(huge_blocks(at(HUGE), HUGE), Some((HUGE, HUGE)));
        assert_eq!(huge_blocks(at(HUGE - 1), 3 * HUGE), Some((HUGE, 2 * HUGE)));
        let w = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let c = weight_copy(&w.t().unwrap()).unwrap();
        assert_eq!(
            c.to_vec2::<f32>().unwrap(),
            w.t().unwrap().to_vec2::<f32>().unwrap()
        );
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The reference: candle's matmul and broadcast add.
    fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let y = x.matmul(&w.t().unwrap()).unwrap();
        match b {
            Some(b) => y.broadcast_add(b).unwrap(),
            None => y,
        }
    }

    #[test]
    fn linear_f32_equals_candle_matmul_for_both_weight_layouts_with_and_without_bias() {
        let dev = Device::Cpu;
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (17, 64, 33), (130, 96, 200)] {
            let x = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (n, k), &dev).unwrap();
            // The same values stored as a row-major (k, n) matrix, viewed as (n, k).
            let w_t = w.t().unwrap().contiguous().unwrap().t().unwrap();
            assert!(n == 1 || k == 1 || !w_t.is_contiguous());
            let b = Tensor::randn(0f32, 1., n, &dev).unwrap();
            for w in [&w, &w_t] {
                for b in [None, Some(&b)] {
                    let fast = linear_f32(&x, w, b).unwrap().expect("fast path applies");
                    assert_eq!(fast.dims(), [m, n]);
                    let d = max_abs_diff(&fast, &reference(&x, w, b));
                    assert!(d <= 1e-4 * (k as f32).sqrt(), "m={m} k={k} n={n}: {d}");
                }
            }
        }
    }

    #[test]
    fn linear_f32_takes_a_row_slice_of_a_larger_weight() {
        // A narrowed view (rows 3..10 of a (12, 16) matrix) starts at an offset.
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (4, 16), &dev).unwrap();
        let big = Tensor::randn(0f32, 1., (12, 16), &dev).unwrap();
        let w = big.narrow(0, 3, 7).unwrap();
        let fast = linear_f32(&x, &w, None).unwrap().unwrap();
        assert!(max_abs_diff(&fast, &reference(&x, &w, None)) <= 1e-5);
    }

    #[test]
    fn linear_f32_declines_what_it_does_not_handle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (4, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (5, 8), &dev).unwrap();
        // A weight that records gradients (training) needs candle's differentiable matmul.
        let var = candle_core::Var::from_tensor(&w).unwrap();
        assert!(linear_f32(&x, var.as_tensor(), None).unwrap().is_none());
        // Another dtype, a non-contiguous input, mismatched inner sizes, a wrong bias.
        let x16 = x.to_dtype(DType::F16).unwrap();
        let w16 = w.to_dtype(DType::F16).unwrap();
        assert!(linear_f32(&x16, &w16, None).unwrap().is_none());
        let xt = Tensor::randn(0f32, 1., (8, 4), &dev).unwrap().t().unwrap();
        assert!(linear_f32(&xt, &w, None).unwrap().is_none());
        let w_bad = Tensor::randn(0f32, 1., (5, 7), &dev).unwrap();
        assert!(linear_f32(&x, &w_bad, None).unwrap().is_none());
        let b_bad = Tensor::zeros(4, DType::F32, &dev).unwrap();
        assert!(linear_f32(&x, &w, Some(&b_bad)).unwrap().is_none());
    }

    /// The reference: the decoder's generic path (candle matmuls, softmax_last_dim), z moved
    /// to (B, Tq, H, D).
    fn attention_reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        softcap: Option<f64>,
        mask: Option<&Tensor>,
        sinks: Option<&Tensor>,
    ) -> Tensor {
        let (b, h, tq, d) = q.dims4().unwrap();
        let (_, g, s, _) = k.dims4().unwrap();
        let rep = h / g;
        let qg = q.reshape((b, g, rep * tq, d)).unwrap();
        let scores = (qg.matmul(&k.t().unwrap()).unwrap() * scale)
            .unwrap()
            .reshape((b, h, tq, s))
            .unwrap();
        let scores = match softcap {
            Some(c) => ((scores / c).unwrap().tanh().unwrap() * c).unwrap(),
            None => scores,
        };
        let scores = match mask {
            Some(m) => scores.broadcast_add(m).unwrap(),
            None => scores,
        };
        // The sink as one more key, dropped after the softmax.
        let probs = match sinks {
            Some(sk) => {
                let col = sk
                    .reshape((b, h, 1, 1))
                    .unwrap()
                    .broadcast_as((b, h, tq, 1))
                    .unwrap();
                let all = Tensor::cat(&[&scores, &col.contiguous().unwrap()], 3).unwrap();
                candle_nn::ops::softmax_last_dim(&all)
                    .unwrap()
                    .narrow(3, 0, s)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            }
            None => candle_nn::ops::softmax_last_dim(&scores).unwrap(),
        };
        let z = probs
            .reshape((b, g, rep * tq, s))
            .unwrap()
            .matmul(v)
            .unwrap()
            .reshape((b, h, tq, d))
            .unwrap();
        z.transpose(1, 2).unwrap().contiguous().unwrap()
    }

    #[test]
    fn attention_f32_equals_the_generic_path_with_groups_masks_and_softcap() {
        let dev = Device::Cpu;
        // (B, H, G, Tq, S, D): grouped queries, one query against a longer cache, one head.
        for (b, h, g, tq, s, d) in [(3, 4, 2, 5, 5, 8), (2, 6, 3, 1, 9, 4), (1, 1, 1, 7, 7, 16)] {
            let q = Tensor::randn(0f32, 1., (b, h, tq, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1., (b, g, s, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1., (b, g, s, d), &dev).unwrap();
            // A causal mask shared by all rows, and one with a different left padding per row.
            let causal: Vec<f32> = (0..tq * s)
                .map(|x| {
                    let (i, j) = (x / s + (s - tq), x % s);
                    if j <= i {
                        0.0
                    } else {
                        f32::MIN
                    }
                })
                .collect();
            let shared = Tensor::from_vec(causal.clone(), (1, 1, tq, s), &dev).unwrap();
            let padded: Vec<f32> =
                (0..b)
                    .flat_map(|r| {
                        causal.iter().enumerate().map(move |(x, &c)| {
                            if x % s < r.min(s - 1) {
                                f32::MIN
                            } else {
                                c
                            }
                        })
                    })
                    .collect();
            let per_row = Tensor::from_vec(padded, (b, 1, tq, s), &dev).unwrap();
            // Sink logits per row and head, one of them dropped (−∞).
            let mut sv: Vec<f32> = (0..b * h).map(|i| (i as f32 * 0.7).sin() * 2.0).collect();
            sv[0] = f32::NEG_INFINITY;
            let sinks = Tensor::from_vec(sv, (b, h), &dev).unwrap();
            for mask in [None, Some(&shared), Some(&per_row)] {
                for softcap in [None, Some(2.5)] {
                    for sink in [None, Some(&sinks)] {
                        let scale = 1.0 / (d as f64).sqrt();
                        let fast = attention_f32(&q, &k, &v, scale, softcap, mask, sink)
                            .unwrap()
                            .expect("fast path applies");
                        assert_eq!(fast.dims(), [b, tq, h, d]);
                        let want = attention_reference(&q, &k, &v, scale, softcap, mask, sink);
                        let diff = max_abs_diff(&fast, &want);
                        assert!(diff <= 1e-5, "{:?}: {diff}", (b, h, g, tq, s, d));
                    }
                }
            }
        }
    }

    #[test]
    fn contiguous_f32_and_weight_copy_equal_candle_contiguous() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (3, 70, 5, 9), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (300, 130), &dev).unwrap();
        // A transposition of the middle dims, a narrowed slice, a 2-D transpose.
        let views = [
            x.transpose(1, 2).unwrap(),
            x.narrow(1, 3, 60).unwrap().narrow(3, 2, 4).unwrap(),
            w.t().unwrap(),
        ];
        for v in views {
            let want = v.contiguous().unwrap();
            let fast = contiguous_f32(&v).unwrap().unwrap();
            assert!(fast.is_contiguous());
            assert_eq!(fast.dims(), want.dims());
            assert_eq!(max_abs_diff(&fast, &want), 0.0);
            let copy = weight_copy(&v).unwrap();
            assert_eq!(max_abs_diff(&copy, &want), 0.0);
        }
        let x16 = x.to_dtype(DType::F16).unwrap().transpose(1, 2).unwrap();
        assert!(contiguous_f32(&x16).unwrap().is_none());
    }

    #[test]
    fn attention_f32_reads_keys_and_values_from_a_larger_cache_buffer() {
        // k and v as views of the first S positions of (B, G, S + 6, D) buffers.
        let dev = Device::Cpu;
        let (b, h, g, tq, s, d) = (2, 4, 2, 1, 9, 8);
        let q = Tensor::randn(0f32, 1., (b, h, tq, d), &dev).unwrap();
        let kb = Tensor::randn(0f32, 1., (b, g, s + 6, d), &dev).unwrap();
        let vb = Tensor::randn(0f32, 1., (b, g, s + 6, d), &dev).unwrap();
        let (k, v) = (kb.narrow(2, 0, s).unwrap(), vb.narrow(2, 0, s).unwrap());
        assert!(!k.is_contiguous());
        let fast = attention_f32(&q, &k, &v, 0.3, None, None, None)
            .unwrap()
            .unwrap();
        let (kc, vc) = (k.contiguous().unwrap(), v.contiguous().unwrap());
        let want = attention_reference(&q, &kc, &vc, 0.3, None, None, None);
        assert!(max_abs_diff(&fast, &want) <= 1e-5);
    }

    #[test]
    fn attention_f32_reads_keys_and_values_from_the_fused_projection_output() {
        // qkv: (B, T, H + 2G, D) as the fused projection writes it; k and v are views
        // (B, G, T, D) whose rows lie (H + 2G)·D apart.
        let dev = Device::Cpu;
        let (b, h, g, t, d) = (2, 4, 2, 6, 8);
        let qkv = Tensor::randn(0f32, 1., (b, t, h + 2 * g, d), &dev).unwrap();
        let q = qkv
            .narrow(2, 0, h)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let k = qkv.narrow(2, h, g).unwrap().transpose(1, 2).unwrap();
        let v = qkv.narrow(2, h + g, g).unwrap().transpose(1, 2).unwrap();
        assert_eq!(v.stride()[2], (h + 2 * g) * d);
        let fast = attention_f32(&q, &k, &v, 0.3, None, None, None)
            .unwrap()
            .expect("fast path applies to strided rows");
        let (kc, vc) = (k.contiguous().unwrap(), v.contiguous().unwrap());
        let want = attention_reference(&q, &kc, &vc, 0.3, None, None, None);
        assert!(max_abs_diff(&fast, &want) <= 1e-5);
    }

    #[test]
    fn rope_f32_equals_candle_rope_bit_for_bit_on_strided_views() {
        let dev = Device::Cpu;
        let (b, n, t, d) = (3, 5, 7, 16);
        let cos = Tensor::randn(0f32, 1., (b, t, d / 2), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1., (b, t, d / 2), &dev).unwrap();
        // A contiguous input, the transposed view of a fused projection, and one position.
        let x = Tensor::randn(0f32, 1., (b, n, t, d), &dev).unwrap();
        let fused = Tensor::randn(0f32, 1., (b, t, n + 2, d), &dev).unwrap();
        let view = fused.narrow(2, 1, n).unwrap().transpose(1, 2).unwrap();
        let last = Tensor::randn(0f32, 1., (b, n, 1, d), &dev).unwrap();
        let (c1, s1) = (
            cos.narrow(1, t - 1, 1).unwrap().contiguous().unwrap(),
            sin.narrow(1, t - 1, 1).unwrap().contiguous().unwrap(),
        );
        for (x, c, s) in [(&x, &cos, &sin), (&view, &cos, &sin), (&last, &c1, &s1)] {
            let fast = rope_f32(x, c, s).unwrap().expect("applies");
            assert!(fast.is_contiguous());
            let want = candle_nn::rotary_emb::rope(&x.contiguous().unwrap(), c, s).unwrap();
            assert_eq!(fast.dims(), want.dims());
            assert_eq!(max_abs_diff(&fast, &want), 0.0);
        }
        // Declined: another dtype, tables of the wrong shape.
        let x16 = x.to_dtype(DType::F16).unwrap();
        assert!(rope_f32(&x16, &cos, &sin).unwrap().is_none());
        assert!(rope_f32(&x, &c1, &s1).unwrap().is_none());
    }

    #[test]
    fn attention_f32_declines_other_dtypes_and_mismatched_shapes() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (1, 4, 3, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (1, 2, 3, 8), &dev).unwrap();
        let q16 = q.to_dtype(DType::F16).unwrap();
        assert!(attention_f32(&q16, &k, &k, 1.0, None, None, None)
            .unwrap()
            .is_none());
        // 4 query heads cannot share 3 key/value heads.
        let k3 = Tensor::randn(0f32, 1., (1, 3, 3, 8), &dev).unwrap();
        assert!(attention_f32(&q, &k3, &k3, 1.0, None, None, None)
            .unwrap()
            .is_none());
        // A mask for 2 key positions when there are 3.
        let m = Tensor::zeros((1, 1, 3, 2), DType::F32, &dev).unwrap();
        assert!(attention_f32(&q, &k, &k, 1.0, None, Some(&m), None)
            .unwrap()
            .is_none());
        // A non-contiguous query; keys whose rows are not contiguous.
        let qt = q.transpose(2, 3).unwrap();
        assert!(attention_f32(&qt, &k, &k, 1.0, None, None, None)
            .unwrap()
            .is_none());
        let kt = Tensor::randn(0f32, 1., (1, 2, 8, 3), &dev)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        assert!(attention_f32(&q, &kt, &kt, 1.0, None, None, None)
            .unwrap()
            .is_none());
    }
}
