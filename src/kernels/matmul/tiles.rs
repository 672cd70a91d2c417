//! Tile configurations of the workgroup-memory kernels: [`TileConfig`] (`smem`) and [`FragConfig`]
//! (`f16`, `coop`), their checks against the shaders' assumptions and the device's limits, and the
//! per-shape choice ([`TileConfig::auto`], [`FragConfig::auto`]).

use crate::gpu::policy::{check_workgroup, parse_dims};
use crate::gpu::Gpu;

/// The smem tile type lives in the device policy (`gpu::policy`), which chooses the large tile.
pub use crate::gpu::policy::{TileConfig, LARGE_TILE_ENV};
use anyhow::{anyhow, bail, Result};

impl TileConfig {
    /// The configuration for an m×n product over `batch` matrices ([`choose`]).
    pub fn auto(gpu: &Gpu, m: usize, n: usize, batch: usize) -> TileConfig {
        let c = [gpu.policy().smem_large_tile, TileConfig::MEDIUM, TileConfig::SMALL];
        choose(&c, |t| (t.bm, t.bn), |t| t.check(gpu).is_ok(), m, n, batch).unwrap_or(TileConfig::SMALL)
    }

    /// The candidates [`auto`](Self::auto) chooses among with the default large tile (where the
    /// limits hold it; else the first is [`LARGE_16K`](Self::LARGE_16K)).
    pub const CANDIDATES: [TileConfig; 3] = [TileConfig::LARGE, TileConfig::MEDIUM, TileConfig::SMALL];

    /// The override constants of `shaders/matmul_smem.wgsl` for these tiles.
    pub fn constants(&self) -> [(&'static str, f64); 6] {
        [
            ("BM", self.bm as f64),
            ("BN", self.bn as f64),
            ("BK", self.bk as f64),
            ("TM", self.tm as f64),
            ("TN", self.tn as f64),
            ("WG", self.invocations() as f64),
        ]
    }
}

/// Tile sizes of [`MatmulVariant::F16`] and [`MatmulVariant::Coop`]: a workgroup of sg_m×sg_n
/// subgroups computes a bm×bn tile in k-steps of bk (a multiple of 16); each subgroup owns
/// (bm/16/sg_m)×(bn/16/sg_n) fragments of 16×16 (1, 2 or 4 × 1 or 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragConfig {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub sg_m: u32,
    pub sg_n: u32,
}

impl FragConfig {
    /// 128×128×32, 2×4 subgroups of 64×32.
    pub const LARGE: FragConfig = FragConfig { bm: 128, bn: 128, bk: 32, sg_m: 2, sg_n: 4 };
    /// 64×64×32, 2×2 subgroups of 32×32.
    pub const MEDIUM: FragConfig = FragConfig { bm: 64, bn: 64, bk: 32, sg_m: 2, sg_n: 2 };
    /// 32×32×16, one subgroup of 32×32.
    pub const SMALL: FragConfig = FragConfig { bm: 32, bn: 32, bk: 16, sg_m: 1, sg_n: 1 };

    fn frags(&self) -> (u32, u32) {
        (self.bm / (16 * self.sg_m.max(1)), self.bn / (16 * self.sg_n.max(1)))
    }

    /// Halves in one buffer of the A and B slices (the larger of the two layouts).
    pub(super) fn tiles(&self) -> (u32, u32) {
        let (bm, bn, bk) = (self.bm, self.bn, self.bk);
        ((bm * (bk + 8)).max(bk * (bm + 8)), (bn * (bk + 8)).max(bk * (bn + 8)))
    }

    /// Workgroup memory in bytes: two f16 buffers of each slice and a 16×16 f32 scratch per subgroup.
    pub fn workgroup_bytes(&self) -> u64 {
        let (ta, tb) = self.tiles();
        4 * (ta as u64 + tb as u64) + 1024 * (self.sg_m * self.sg_n) as u64
    }

    /// The candidates [`auto`](Self::auto) chooses among.
    pub const CANDIDATES: [FragConfig; 3] = [FragConfig::LARGE, FragConfig::MEDIUM, FragConfig::SMALL];

    /// The override constants of `shaders/matmul_f16.wgsl` (and `matmul_coop.wgsl`) for these
    /// tiles and subgroups of `sgs` lanes.
    pub fn constants(&self, sgs: u32) -> [(&'static str, f64); 9] {
        let (ta, tb) = self.tiles();
        [
            ("BM", self.bm as f64),
            ("BN", self.bn as f64),
            ("BK", self.bk as f64),
            ("SG_M", self.sg_m as f64),
            ("SG_N", self.sg_n as f64),
            ("SGS", sgs as f64),
            ("WG", (self.sg_m * self.sg_n * sgs) as f64),
            ("A_TILE", ta as f64),
            ("B_TILE", tb as f64),
        ]
    }

    /// Checks the shader's assumptions and the device's limits for subgroups of `sgs` lanes.
    pub fn check(&self, gpu: &Gpu, sgs: u32) -> Result<()> {
        self.validate(sgs)?;
        let wg = self.sg_m * self.sg_n * sgs;
        check_workgroup(&gpu.limits, &format!("fragment tiles {self}"), wg, self.workgroup_bytes())
    }

    /// Checks the shader's assumptions (any device) for subgroups of `sgs` lanes.
    pub fn validate(&self, sgs: u32) -> Result<()> {
        let &FragConfig { bm, bn, bk, sg_m, sg_n } = self;
        if sg_m == 0 || sg_n == 0 || bk == 0 || bk % 16 != 0 || bm % (16 * sg_m) != 0 || bn % (16 * sg_n) != 0 {
            bail!("fragment tiles {self}: bk must be a multiple of 16 and bm, bn of 16·sg_m, 16·sg_n");
        }
        let (fm, fn_) = self.frags();
        if !matches!(fm, 1 | 2 | 4) || !matches!(fn_, 1 | 2) {
            bail!("fragment tiles {self}: a subgroup must own 1, 2 or 4 × 1 or 2 fragments (has {fm}×{fn_})");
        }
        if sgs == 0 || 256 % sgs != 0 {
            bail!("fragment tiles {self}: subgroups of {sgs} lanes do not divide a 16×16 fragment");
        }
        let wg = sg_m * sg_n * sgs;
        for (what, elems) in [("A", bm * bk), ("B", bk * bn)] {
            if elems % (4 * wg) != 0 || !(1..=8).contains(&(elems / (4 * wg))) {
                bail!("fragment tiles {self}: the {what} slice must be 1 to 8 quads per invocation ({wg} invocations)");
            }
        }
        Ok(())
    }

    /// The configuration for an m×n product over `batch` matrices ([`choose`]).
    pub fn auto(gpu: &Gpu, sgs: u32, m: usize, n: usize, batch: usize) -> FragConfig {
        choose(&Self::CANDIDATES, |t| (t.bm, t.bn), |t| t.check(gpu, sgs).is_ok(), m, n, batch)
            .unwrap_or(FragConfig::SMALL)
    }
}

impl std::fmt::Display for FragConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}/{}x{}", self.bm, self.bn, self.bk, self.sg_m, self.sg_n)
    }
}

impl std::str::FromStr for FragConfig {
    type Err = anyhow::Error;
    /// `BMxBNxBK/SG_MxSG_N`, e.g. `128x128x32/2x4`.
    fn from_str(s: &str) -> Result<Self> {
        let v = parse_dims(s, 3, 2).map_err(|e| anyhow!("fragment tiles {s:?}: {e} (expected BMxBNxBK/SGMxSGN)"))?;
        Ok(FragConfig { bm: v[0], bn: v[1], bk: v[2], sg_m: v[3], sg_n: v[4] })
    }
}

/// Picks among tile configurations (largest first): the first valid one that gives at least
/// [`TARGET_WORKGROUPS`] workgroups and wastes at most a quarter of its tiles on padding, else
/// the valid one with the least padding (the smallest on ties).
fn choose<T: Copy>(
    configs: &[T],
    dims: impl Fn(&T) -> (u32, u32),
    valid: impl Fn(&T) -> bool,
    m: usize,
    n: usize,
    batch: usize,
) -> Option<T> {
    let stats = |t: &T| {
        let (bm, bn) = dims(t);
        let (tm, tn) = (m.div_ceil(bm as usize).max(1), n.div_ceil(bn as usize).max(1));
        let fill = (m * n) as f64 / (tm * bm as usize * tn * bn as usize) as f64;
        (tm * tn * batch.max(1), fill)
    };
    let ok: Vec<&T> = configs.iter().filter(|t| valid(t)).collect();
    ok.iter()
        .find(|t| {
            let (groups, fill) = stats(t);
            groups >= TARGET_WORKGROUPS && fill >= 0.75
        })
        .or_else(|| ok.iter().rev().min_by(|a, b| stats(b).1.total_cmp(&stats(a).1)))
        .map(|t| **t)
}

/// Workgroups a product should have to fill a large GPU (an H100 has 132 multiprocessors).
pub const TARGET_WORKGROUPS: usize = 128;
