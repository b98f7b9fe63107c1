//! Channel shuffle (ShuffleNet: Reshape → Transpose → Reshape) and the channel-count arithmetic
//! around it (`x.chunk(k)` exported as Slices whose bounds are computed from `Shape(x)`).
//!
//! A shuffle over g groups sends input channel k·(C/g) + i to output channel i·g + k. It commutes
//! with removing channels only when every group keeps the same indices i: so the g positions
//! {k·(C/g) + i} become one unit (union), the pruned model shuffles C′ = g·|kept i| channels, and
//! output channel i·g + k is kept exactly when i is. Targets computed from `Shape(x)` (C/g as
//! `Div(C, g)`, C itself) adapt to C′ by themselves; literal ones are edited.
//!
//! A Slice whose bounds are computed from its input's own channel count (m·⌊(C + a)/d⌋: the torch
//! export of `x.chunk(d)`) would compute them from C′ in the pruned model, which is right only if
//! every chunk lost as many units; instead the rewrite feeds the kept count before each bound as
//! a constant whenever the axis changes ([`Edit::Bound`]), so the chunks prune independently.

use super::*;

/// m·⌊(dim + add)/div⌋: a channel count after the integer arithmetic of a shape vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Lin {
    pub add: i64,
    pub div: i64,
    pub mul: i64,
}

impl Lin {
    pub(super) const ID: Lin = Lin { add: 0, div: 1, mul: 1 };

    pub(super) fn eval(&self, d: i64) -> Option<i64> {
        let s = d.checked_add(self.add)?;
        (s >= 0 && self.div > 0).then(|| (s / self.div).checked_mul(self.mul)).flatten()
    }
}

impl Sym {
    /// The dim this element reads, with the arithmetic applied to it.
    pub(super) fn dim_expr(&self) -> Option<(&str, usize, Lin)> {
        match self {
            Sym::Dim(n, a) => Some((n, *a, Lin::ID)),
            Sym::Expr(n, a, l) => Some((n, *a, *l)),
            Sym::Lit(..) | Sym::Other => None,
        }
    }
}

/// Whether `perm` (of a rank `rank + 1` tensor) swaps axes `a` and `a + 1` only: the Transpose
/// of a channel shuffle whose channel axis `a` was split in two.
pub(super) fn swaps(perm: &[i64], a: usize, rank: usize) -> bool {
    perm.len() == rank + 1
        && perm.iter().enumerate().all(|(i, &p)| {
            p == if i == a {
                a as i64 + 1
            } else if i == a + 1 {
                a as i64
            } else {
                i as i64
            }
        })
}

impl Analyzer<'_, '_> {
    /// Add / Mul / Div of shape-vector elements by an integer constant (torch's `c // g`,
    /// `(c + 1) // 2 * k`). None when the node is anything else.
    pub(super) fn shape_arith(&self, n: &NodeProto) -> Option<Vec<Sym>> {
        let op = n.op_type.as_str();
        if !matches!(op, "Add" | "Mul" | "Div") || n.input.len() != 2 {
            return None;
        }
        let scalar = |i: usize| inp(n, i).and_then(|s| self.ctx.const_ints(s)).filter(|v| v.len() == 1).map(|v| v[0]);
        let (v, c) = match (inp(n, 0).and_then(|s| self.shape_vecs.get(s)), scalar(1)) {
            (Some(v), Some(c)) => (v, c),
            _ if op != "Div" => (inp(n, 1).and_then(|s| self.shape_vecs.get(s))?, scalar(0)?),
            _ => return None,
        };
        v.iter()
            .map(|e| match (op, e) {
                ("Add", Sym::Lit(x, _)) => x.checked_add(c).map(|r| Sym::Lit(r, None)),
                ("Mul", Sym::Lit(x, _)) => x.checked_mul(c).map(|r| Sym::Lit(r, None)),
                ("Div", Sym::Lit(x, _)) => (*x >= 0 && c > 0).then(|| Sym::Lit(x / c, None)),
                _ => {
                    let (name, axis, l) = e.dim_expr()?;
                    let plain = l.div == 1 && l.mul == 1;
                    let l = match op {
                        "Add" if plain => Lin { add: l.add.checked_add(c)?, ..l },
                        "Div" if plain && c > 0 => Lin { div: c, ..l },
                        "Mul" if c > 0 => Lin { mul: l.mul.checked_mul(c)?, ..l },
                        _ => return None,
                    };
                    Some(Sym::Expr(name.to_string(), axis, l))
                }
            })
            .collect()
    }

    /// Element-wise integer arithmetic of shape vectors that [`Self::shape_arith`] cannot follow
    /// (a product of two dims: torchvision's `h // p * w // p`): opaque elements
    /// ([`Sym::Other`]) when no operand reads a channel count, else None (and the caller blocks).
    pub(super) fn opaque_arith(&self, n: &NodeProto) -> Option<Vec<Sym>> {
        if !matches!(n.op_type.as_str(), "Add" | "Sub" | "Mul" | "Div") || n.input.len() != 2 {
            return None;
        }
        let mut len = 1usize;
        for i in &n.input {
            let l = match self.shape_vecs.get(i.as_str()) {
                Some(v) => {
                    let channel = v.iter().any(|e| {
                        e.dim_expr().is_some_and(|(nm, a, _)| self.st.tracks.get(nm).is_some_and(|t| t.axis == a))
                    });
                    if channel {
                        return None;
                    }
                    v.len()
                }
                None => self.ctx.const_ints(i)?.len(),
            };
            if l != 1 && len != 1 && l != len {
                return None;
            }
            len = len.max(l);
        }
        Some(vec![Sym::Other; len])
    }

    /// A Slice bound computed from the sliced tensor's own channel count: its arithmetic, when
    /// it reads `data`'s dim `axis` and nothing else.
    pub(super) fn own_count_bound(&self, n: &NodeProto, slot: usize, data: &str, axis: usize) -> Option<Lin> {
        match self.shape_vecs.get(inp(n, slot)?)?.as_slice() {
            [e] => e.dim_expr().filter(|(nm, a, _)| *nm == data && *a == axis).map(|(_, _, l)| l),
            _ => None,
        }
    }

    /// The first Reshape of a channel shuffle: [.., C, ..] → [.., g, C/g, ..]. Joins the g
    /// positions each index i stands for, tracks the C/g axis (its units: group 0's) and leaves
    /// the permutation to [`Self::shuffle_merge`] at the Reshape back.
    pub(super) fn shuffle_split(&mut self, ni: usize, n: &NodeProto, x: Track, back: usize, perm: &[i64]) {
        let out_of = |why: &str| format!("{} (channel shuffle: {why})", barrier_reason(n));
        let a = x.axis;
        let c = x.units.len();
        let me = inp(n, 0).unwrap_or_default().to_string();
        let swap = swaps(perm, a, x.rank);
        let target = self.target(ni, n);
        let allowzero = attr_i(n, "allowzero").unwrap_or(0) != 0;
        let g = match target.as_ref().and_then(|t| t.get(a)) {
            Some(Sym::Lit(g, _)) if *g > 1 && c.is_multiple_of(*g as usize) => *g as usize,
            _ => 0,
        };
        let per = c.checked_div(g).unwrap_or(0);
        let Some(t) = target.filter(|t| swap && g > 0 && t.len() == x.rank + 1) else {
            self.block(&x.units, &out_of("groups, target or permutation not understood"));
            return;
        };
        let lead = (0..a).all(|i| self.entry_ok(&t[i], &me, a, Some(i), allowzero));
        let tail = (a + 2..t.len()).all(|i| self.entry_ok(&t[i], &me, a, None, allowzero));
        let count = match &t[a + 1] {
            Sym::Lit(v, at) if *v == per as i64 => Some(Some(*at)),
            Sym::Lit(-1, _) => Some(None),
            Sym::Expr(nm, k, l) if *nm == me && *k == a && l.add == 0 && l.div == g as i64 && l.mul == 1 => Some(None),
            _ => None,
        };
        let Some(count) = count.filter(|_| lead && tail) else {
            self.block(&x.units, &out_of("target not understood"));
            return;
        };
        let reason = out_of("a position no group owns is shuffled with pruned ones");
        for i in 0..per {
            for k in 1..g {
                self.join(x.units[i], x.units[k * per + i], &reason);
            }
        }
        let first: Units = x.units[..per].into();
        if let Some(at) = count {
            if !self.count_edit(&x, n, at, first.clone()) {
                return;
            }
        }
        let vals: Vals = vec![Val::Varying; per].into();
        self.touch(ni, &x.units);
        self.emit(ni, &n.output[0], Track { axis: a + 1, rank: x.rank + 1, units: first, vals });
        self.shuffles.insert(back, (me, x, g));
    }

    /// The Reshape back of a channel shuffle: [.., C/g, g, ..] → [.., C, ..]. Output channel
    /// i·g + k carries input channel k·(C/g) + i.
    pub(super) fn shuffle_merge(&mut self, ni: usize, n: &NodeProto, y: Track, (src, x, g): (String, Track, usize)) {
        let out_of = |why: &str| format!("{} (channel shuffle: {why})", barrier_reason(n));
        let a = x.axis;
        let c = x.units.len();
        let me = inp(n, 0).unwrap_or_default().to_string();
        let allowzero = attr_i(n, "allowzero").unwrap_or(0) != 0;
        let target = self.target(ni, n).filter(|t| t.len() == x.rank && y.axis == a && y.rank == x.rank + 1);
        let Some(t) = target else {
            self.block(&x.units, &out_of("the shuffled axes are not merged back"));
            return;
        };
        // Entries before a keep the shuffle's lead dims, those after any factoring of the rest.
        let same = |e: &Sym, j: usize| {
            let at = (j < a).then_some(j);
            // The transposed tensor carries the channels on two axes, a (C/g) and a + 1 (g).
            let reads_c = matches!(e, Sym::Dim(nm, k) if *nm == me && *k == a);
            self.entry_ok(e, &src, a, at, allowzero) || (!reads_c && self.entry_ok(e, &me, a + 1, at, allowzero))
        };
        let count = match &t[a] {
            Sym::Dim(nm, k) if *nm == src && *k == a => Some(None),
            Sym::Lit(-1, _) => Some(None),
            Sym::Lit(v, at) if *v == c as i64 => Some(Some(*at)),
            _ => None,
        };
        let others = (0..t.len()).filter(|&j| j != a).all(|j| same(&t[j], j));
        let Some(count) = count.filter(|_| others) else {
            self.block(&x.units, &out_of("target not understood"));
            return;
        };
        let per = c / g;
        let pos = |j: usize| (j % g) * per + j / g;
        let units: Units = (0..c).map(|j| x.units[pos(j)]).collect();
        let vals: Vals = (0..c).map(|j| x.vals[pos(j)]).collect();
        if let Some(at) = count {
            if !self.count_edit(&x, n, at, units.clone()) {
                return;
            }
        }
        self.touch(ni, &y.units);
        self.emit(ni, &n.output[0], Track { axis: a, rank: x.rank, units, vals });
    }

    /// One target entry of a Reshape of `name` around its channel axis `a`. At a lead place
    /// `Some(j)` (j < a) it must equal the input's dim j: a copy (0, `Shape`) or a literal that
    /// equals the declared or carried batch. After the channel entries (`None`) any factoring of
    /// the remaining dims maps channels the same way: a literal, -1, or a read of one of
    /// `name`'s own dims other than the channel axis (none of which pruning changes).
    pub(super) fn entry_ok(&self, e: &Sym, name: &str, a: usize, lead_at: Option<usize>, allowzero: bool) -> bool {
        match (lead_at, e) {
            (Some(_), Sym::Lit(0, _)) => !allowzero,
            (Some(j), Sym::Lit(v, _)) => {
                let d = self.ctx.shapes.get(name).and_then(|d| d.get(j).copied().flatten());
                let d = d.or_else(|| (j == 0).then(|| self.ctx.dim0(name)).flatten());
                d.is_some_and(|d| d as i64 == *v)
            }
            (Some(j), Sym::Dim(nm, k)) => nm == name && *k == j,
            (None, Sym::Lit(v, _)) => *v >= -1 && (*v != 0 || !allowzero),
            (None, Sym::Dim(nm, k)) => nm == name && *k != a,
            (_, Sym::Expr(..)) | (Some(_), Sym::Other) => false,
            (None, Sym::Other) => true,
        }
    }

    /// A Reshape's target as symbols: a constant (editable in place) or a followed shape vector.
    pub(super) fn target(&self, ni: usize, n: &NodeProto) -> Option<Vec<Sym>> {
        let tname = inp(n, 1)?;
        match self.ctx.const_ints(tname) {
            Some(v) => Some(v.iter().enumerate().map(|(i, &v)| Sym::Lit(v, Some((ni, 1, i)))).collect()),
            None => self.shape_vecs.get(tname).cloned(),
        }
    }
}
