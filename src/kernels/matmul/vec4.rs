//! Host side of the workgroup-memory kernels (`shaders/matmul_vec4.wgsl` with
//! `matmul_smem.wgsl`, `matmul_f16.wgsl`, `matmul_coop.wgsl`): quad directions and vec4 eligibility
//! from the operands' strides, tile sizes, dispatch.

use super::tiles::{FragConfig, TileConfig};
use super::variant::MatmulVariant;
use super::{Matmul, Params, View};
use crate::gpu::{CommandRecorder, GpuTensor};
use anyhow::{bail, Result};

/// The subgroup size the `f16` variant's fragments assume (`SGS`): its invocations emulate a
/// subgroup, so any device runs it; `coop` takes the device's fixed subgroup size.
pub(super) const F16_SUBGROUP: u32 = 32;

impl Matmul {
    /// The workgroup-memory variants (`matmul_vec4.wgsl`): quad directions and vec4 eligibility
    /// from the operands' strides, tile sizes, dispatch.
    pub(super) fn run_vec4(
        &self,
        batch: &mut CommandRecorder,
        variant: MatmulVariant,
        params: &Params,
        (a, b, c): (View, View, View),
        (bias, aux): (Option<&GpuTensor>, Option<&GpuTensor>),
        total: usize,
    ) -> Result<()> {
        let gpu = batch.gpu().clone();
        let (m, n, k) = (self.m, self.n, self.k);
        let inner = params.inner > 1;
        let outer = self.batch > 1;
        // Quads along A's k unless i is the contiguous dimension; B's along j unless k is.
        let a_kq = params.a[2] == 1 || params.a[1] != 1;
        let b_jq = params.b[2] == 1 || params.b[1] != 1;
        // vec4 loads: stride 1 along the quad, the quad dimension a multiple of 4, every other
        // stride and the offset multiples of 4 (so every quad is one aligned, whole vec4).
        let aligned = |off: u32, others: &[u32], outer_s: u32, inner_s: u32| {
            off % 4 == 0
                && others.iter().all(|s| s % 4 == 0)
                && (!outer || outer_s % 4 == 0)
                && (!inner || inner_s % 4 == 0)
        };
        let a_vec = if a_kq {
            params.a[2] == 1 && k % 4 == 0 && aligned(params.a[0], &[params.a[1]], params.a[3], params.inner_strides[0])
        } else {
            params.a[1] == 1 && m % 4 == 0 && aligned(params.a[0], &[params.a[2]], params.a[3], params.inner_strides[0])
        } && a.t.numel() >= 4;
        let b_vec = if b_jq {
            params.b[2] == 1 && n % 4 == 0 && aligned(params.b[0], &[params.b[1]], params.b[3], params.inner_strides[1])
        } else {
            params.b[1] == 1 && k % 4 == 0 && aligned(params.b[0], &[params.b[2]], params.b[3], params.inner_strides[1])
        } && b.t.numel() >= 4;
        let flag = |x: bool| if x { 1.0 } else { 0.0 };
        let mut constants: Vec<(&'static str, f64)> = vec![
            ("A_KQ", flag(a_kq)),
            ("B_JQ", flag(b_jq)),
            ("A_VEC", flag(a_vec)),
            ("B_VEC", flag(b_vec)),
            ("HAS_BIAS", flag(bias.is_some())),
            ("ACT", self.act.id()),
            ("USE_BETA", flag(self.beta != 0.0)),
        ];
        constants.extend(self.epilogue.constants());
        let (bm, bn) = if variant == MatmulVariant::Smem {
            let t = self.smem_tiles.unwrap_or_else(|| TileConfig::auto(&gpu, m, n, total));
            t.check(&gpu)?;
            constants.extend(t.constants());
            (t.bm, t.bn)
        } else {
            let sgs =
                if variant == MatmulVariant::Coop { gpu.description.info.subgroup_max_size } else { F16_SUBGROUP };
            let t = self.frag_tiles.unwrap_or_else(|| FragConfig::auto(&gpu, sgs, m, n, total));
            t.check(&gpu, sgs)?;
            constants.extend(t.constants(sgs));
            (t.bm, t.bn)
        };
        let groups = [n.div_ceil(bn as usize), m.div_ceil(bm as usize), total];
        let max = gpu.limits.max_compute_workgroups_per_dimension as usize;
        if groups.iter().any(|&g| g > max) {
            bail!(
                "matmul {m}×{n} × batch {total} needs {groups:?} workgroups, more than the GPU's {max} per dimension"
            );
        }
        let groups = [groups[0] as u32, groups[1] as u32, groups[2] as u32];
        batch.dispatch(
            &variant.spec(),
            &constants,
            params,
            // Without an epilogue aux binds its slot's dummy (never touched; see `run_full`).
            &[Some(a.t), a_vec.then_some(a.t), Some(b.t), b_vec.then_some(b.t), bias, Some(c.t), aux],
            groups,
        );
        Ok(())
    }
}
