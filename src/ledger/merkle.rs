//! RFC 6962 / RFC 9162 Merkle tree math over SHA-256.
//!
//! What it is: leaf and node hashing, tree heads of any size, inclusion and consistency proof
//! generation and verification, and the [`Frontier`] (the compact range `[0, size)`) that the
//! writer extends one leaf at a time.
//!
//! What it is not: a tree store. Proof generation reads complete-subtree hashes through the
//! [`NodeReader`] trait, so the same code serves RocksDB, an in-memory tree in tests and an
//! export bundle. No I/O, no clock, no RocksDB or tonic in here.
//!
//! Terminology: a *complete subtree* `NodeId { level, index }` covers the leaves
//! `[index << level, (index + 1) << level)`; level 0 holds the leaf hashes. Every node of an
//! RFC 6962 tree that is not on its right edge is a complete subtree, so any proof needs only
//! `O(log n)` complete-subtree reads.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Domain separation prefix of a leaf hash (RFC 6962 section 2.1).
pub const LEAF_PREFIX: u8 = 0x00;
/// Domain separation prefix of an interior node hash (RFC 6962 section 2.1).
pub const NODE_PREFIX: u8 = 0x01;

/// `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(leaf);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Address of a complete subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u8,
    pub index: u64,
}

impl NodeId {
    pub fn leaf(index: u64) -> Self {
        NodeId { level: 0, index }
    }

    /// The first leaf this subtree covers.
    pub fn first_leaf(self) -> u64 {
        self.index << self.level
    }

    /// How many leaves this subtree covers.
    pub fn width(self) -> u64 {
        1u64 << self.level
    }
}

/// Reads complete-subtree hashes. Storage implements it; the math here never knows where the
/// hashes live.
pub trait NodeReader {
    type Error;
    fn node(&self, id: NodeId) -> Result<Hash, Self::Error>;
}

/// Why a proof could not be produced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError<E> {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("consistency proof needs old size <= new size, got {old} and {new}")]
    BadSizes { old: u64, new: u64 },
    #[error("reading a tree node: {0}")]
    Read(E),
}

/// Why a proof did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum VerifyError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old size {old} is larger than new size {new}")]
    SizeOrder { old: u64, new: u64 },
    #[error("proof has the wrong length")]
    WrongLength,
    #[error("computed root does not match the expected root")]
    RootMismatch,
}

/// Largest power of two strictly smaller than `n` (`n >= 2`): RFC 6962's split point `k`.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The complete subtrees that make up the range `[0, size)`, left to right (highest first).
pub fn frontier_ids(size: u64) -> impl Iterator<Item = NodeId> {
    (0..64u8).rev().filter_map(move |level| {
        if size & (1u64 << level) == 0 {
            return None;
        }
        let first = (size >> (level + 1)) << (level + 1);
        Some(NodeId {
            level,
            index: first >> level,
        })
    })
}

/// The compact range `[0, size)`: one complete-subtree hash per set bit of `size`. It is all the
/// writer needs to append leaves and compute tree heads; reopening a ledger reads it back from
/// `O(log n)` stored nodes instead of replaying the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Hashes of [`frontier_ids`]`(size)`, in the same order (highest level first).
    hashes: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the frontier of a tree of `size` leaves from its stored complete subtrees.
    pub fn load<R: NodeReader>(size: u64, reader: &R) -> Result<Self, R::Error> {
        let hashes = frontier_ids(size)
            .map(|id| reader.node(id))
            .collect::<Result<_, _>>()?;
        Ok(Frontier { size, hashes })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree head `MTH(D[0:size])`.
    pub fn root(&self) -> Hash {
        let mut iter = self.hashes.iter().rev();
        match iter.next() {
            None => empty_root(),
            Some(last) => iter.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }

    /// Appends a leaf hash. `store` receives every complete subtree the append completes (the
    /// leaf itself first, then each parent it closes), which is exactly what storage must keep
    /// so that any later proof needs only complete-subtree reads.
    pub fn append(&mut self, leaf: Hash, mut store: impl FnMut(NodeId, Hash)) {
        let mut id = NodeId::leaf(self.size);
        let mut hash = leaf;
        store(id, hash);
        while id.index & 1 == 1 {
            let left = self
                .hashes
                .pop()
                .expect("an odd index has a left sibling in the frontier");
            hash = node_hash(&left, &hash);
            id = NodeId {
                level: id.level + 1,
                index: id.index >> 1,
            };
            store(id, hash);
        }
        self.hashes.push(hash);
        self.size += 1;
    }
}

/// `MTH(D[lo:hi])` from stored complete subtrees (`lo < hi`).
fn range_hash<R: NodeReader>(reader: &R, lo: u64, hi: u64) -> Result<Hash, R::Error> {
    let n = hi - lo;
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        let level = n.trailing_zeros() as u8;
        return reader.node(NodeId {
            level,
            index: lo >> level,
        });
    }
    let k = split_point(n);
    Ok(node_hash(
        &range_hash(reader, lo, lo + k)?,
        &range_hash(reader, lo + k, hi)?,
    ))
}

/// Root of the tree of `size` leaves, from stored complete subtrees.
pub fn root<R: NodeReader>(reader: &R, size: u64) -> Result<Hash, R::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(reader, 0, size)
}

/// RFC 9162 section 2.1.3.1 `PATH(index, D[0:size])`.
pub fn inclusion_proof<R: NodeReader>(
    reader: &R,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError<R::Error>> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::with_capacity(64);
    // Walk down from the root; siblings are collected top-down and reversed at the end because
    // PATH lists them bottom-up.
    let (mut lo, mut hi) = (0, size);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            proof.push(range_hash(reader, lo + k, hi).map_err(ProofError::Read)?);
            hi = lo + k;
        } else {
            proof.push(range_hash(reader, lo, lo + k).map_err(ProofError::Read)?);
            lo += k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// RFC 9162 section 2.1.4.1 `PROOF(old, D[0:new])`, for `old <= new` (empty when `old` is 0).
pub fn consistency_proof<R: NodeReader>(
    reader: &R,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError<R::Error>> {
    if old > new {
        return Err(ProofError::BadSizes { old, new });
    }
    if old == 0 {
        return Ok(vec![]);
    }
    let mut proof = Vec::with_capacity(64);
    // SUBPROOF(m, D[lo:hi], b), iteratively; again collected top-down, emitted bottom-up.
    let (mut lo, mut hi, mut m, mut whole) = (0, new, old, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !whole {
                proof.push(range_hash(reader, lo, hi).map_err(ProofError::Read)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            proof.push(range_hash(reader, lo + k, hi).map_err(ProofError::Read)?);
            hi = lo + k;
        } else {
            proof.push(range_hash(reader, lo, lo + k).map_err(ProofError::Read)?);
            lo += k;
            m -= k;
            whole = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// RFC 9162 section 2.1.3.2: does `proof` show `leaf` at `index` in the tree `root` of `size`?
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    if index >= size {
        return Err(VerifyError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(VerifyError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(VerifyError::WrongLength);
    }
    if &r != root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 section 2.1.4.2: is the tree `new_root` of `new` leaves an append-only extension of
/// the tree `old_root` of `old` leaves?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    if old > new {
        return Err(VerifyError::SizeOrder { old, new });
    }
    if old == 0 {
        // Every tree extends the empty tree; the proof is empty and proves nothing beyond that.
        if !proof.is_empty() {
            return Err(VerifyError::WrongLength);
        }
        let empty = empty_root();
        return if old_root == &empty && (new > 0 || new_root == &empty) {
            Ok(())
        } else {
            Err(VerifyError::RootMismatch)
        };
    }
    if old == new {
        if !proof.is_empty() {
            return Err(VerifyError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(VerifyError::RootMismatch)
        };
    }
    if proof.is_empty() {
        return Err(VerifyError::WrongLength);
    }
    // Step 1: when `old` is a power of two its root is the first node of the path.
    let mut path = proof.iter();
    let first = if old.is_power_of_two() {
        old_root
    } else {
        path.next().expect("proof is not empty")
    };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in path {
        if snode == 0 {
            return Err(VerifyError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(VerifyError::WrongLength);
    }
    if &fr != old_root || &sr != new_root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// A complete tree held in memory, level by level: for tests, export bundles and offline
/// verification, where all leaves are at hand anyway.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    /// `levels[l][i]` is the complete subtree `NodeId { level: l, index: i }`.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_leaf_hashes(leaves: impl IntoIterator<Item = Hash>) -> Self {
        let mut tree = Self::new();
        let mut frontier = Frontier::new();
        for leaf in leaves {
            frontier.append(leaf, |id, h| tree.put(id, h));
        }
        tree
    }

    pub fn put(&mut self, id: NodeId, hash: Hash) {
        let level = id.level as usize;
        if self.levels.len() <= level {
            self.levels.resize_with(level + 1, Vec::new);
        }
        let row = &mut self.levels[level];
        debug_assert_eq!(row.len() as u64, id.index, "nodes are stored left to right");
        row.push(hash);
    }

    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn root(&self) -> Hash {
        root(self, self.size()).expect("memory tree has every complete subtree")
    }

    /// Every stored complete subtree, level by level.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Hash)> {
        self.levels.iter().enumerate().flat_map(|(level, row)| {
            row.iter().enumerate().map(move |(i, h)| {
                (
                    NodeId {
                        level: level as u8,
                        index: i as u64,
                    },
                    h,
                )
            })
        })
    }
}

/// A node the reader does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[error("tree node level {} index {} is missing", .0.level, .0.index)]
pub struct MissingNode(pub NodeId);

impl NodeReader for MemoryTree {
    type Error = MissingNode;
    fn node(&self, id: NodeId) -> Result<Hash, MissingNode> {
        self.levels
            .get(id.level as usize)
            .and_then(|row| row.get(id.index as usize))
            .copied()
            .ok_or(MissingNode(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 6962's recursive definition, verbatim: the model the fast code is checked against.
    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    fn naive_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n == 1 {
            return vec![];
        }
        let k = split_point(n as u64) as usize;
        if m < k {
            let mut p = naive_path(m, &leaves[..k]);
            p.push(naive_root(&leaves[k..]));
            p
        } else {
            let mut p = naive_path(m - k, &leaves[k..]);
            p.push(naive_root(&leaves[..k]));
            p
        }
    }

    fn naive_subproof(m: usize, leaves: &[Hash], whole: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if whole {
                vec![]
            } else {
                vec![naive_root(leaves)]
            };
        }
        let k = split_point(n as u64) as usize;
        if m <= k {
            let mut p = naive_subproof(m, &leaves[..k], whole);
            p.push(naive_root(&leaves[k..]));
            p
        } else {
            let mut p = naive_subproof(m - k, &leaves[k..], false);
            p.push(naive_root(&leaves[..k]));
            p
        }
    }

    /// The hashing steps RFC 9162's inclusion verifier takes for (index, size) with a proof of
    /// `len` hashes: `true` = proof element on the left. Two sizes with the same steps cannot be
    /// told apart by the proof alone (the size is bound by the signed checkpoint instead).
    fn inclusion_steps(index: u64, size: u64, len: usize) -> Option<Vec<bool>> {
        if index >= size {
            return None;
        }
        let (mut f, mut s) = (index, size - 1);
        let mut steps = vec![];
        for _ in 0..len {
            if s == 0 {
                return None;
            }
            if f & 1 == 1 || f == s {
                steps.push(true);
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                steps.push(false);
            }
            f >>= 1;
            s >>= 1;
        }
        (s == 0).then_some(steps)
    }

    /// Same for the consistency verifier: (old is a power of two, steps) where a step is 0 =
    /// combine into both roots, 1 = combine into the new root only.
    fn consistency_steps(old: u64, new: u64, len: usize) -> Option<(bool, Vec<u8>)> {
        if old == 0 || old >= new {
            return None;
        }
        let pow2 = old.is_power_of_two();
        let skip = if pow2 { 0 } else { 1 };
        let (mut f, mut s) = (old - 1, new - 1);
        while f & 1 == 1 {
            f >>= 1;
            s >>= 1;
        }
        let mut steps = vec![];
        for _ in skip..len {
            if s == 0 {
                return None;
            }
            if f & 1 == 1 || f == s {
                steps.push(0);
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                steps.push(1);
            }
            f >>= 1;
            s >>= 1;
        }
        (s == 0).then_some((pow2, steps))
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    fn flip(mut h: Hash, bit: usize) -> Hash {
        h[bit / 8 % 32] ^= 1 << (bit % 8);
        h
    }

    #[test]
    fn split_point_is_largest_power_of_two_below() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(1 << 40), 1 << 39);
        assert_eq!(split_point((1 << 40) + 1), 1 << 40);
    }

    #[test]
    fn frontier_root_and_stored_root_agree_with_naive_for_every_small_size() {
        let all = leaves(300);
        let mut tree = MemoryTree::new();
        let mut frontier = Frontier::new();
        for n in 0..=all.len() {
            let want = naive_root(&all[..n]);
            assert_eq!(frontier.root(), want, "frontier root at size {n}");
            assert_eq!(
                root(&tree, n as u64).unwrap(),
                want,
                "stored root at size {n}"
            );
            assert_eq!(
                Frontier::load(n as u64, &tree).unwrap(),
                frontier,
                "reloaded at {n}"
            );
            if n < all.len() {
                frontier.append(all[n], |id, h| tree.put(id, h));
            }
        }
    }

    #[test]
    fn frontier_ids_cover_the_range_left_to_right() {
        for size in 0..200u64 {
            let mut next = 0;
            for id in frontier_ids(size) {
                assert_eq!(id.first_leaf(), next);
                next += id.width();
            }
            assert_eq!(next, size);
        }
    }

    #[test]
    fn proofs_out_of_range_are_refused() {
        let tree = MemoryTree::from_leaf_hashes(leaves(5));
        assert_eq!(
            inclusion_proof(&tree, 5, 5),
            Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(consistency_proof(&tree, 0, 5), Ok(vec![]));
        assert_eq!(
            consistency_proof(&tree, 6, 5),
            Err(ProofError::BadSizes { old: 6, new: 5 })
        );
        assert_eq!(
            inclusion_proof(&tree, 3, 9),
            Err(ProofError::Read(MissingNode(NodeId { level: 0, index: 8 })))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn proofs_match_the_naive_definition_and_verify(size in 1usize..600, seed in any::<u64>()) {
            let all = leaves(size);
            let tree = MemoryTree::from_leaf_hashes(all.iter().copied());
            let r = tree.root();
            prop_assert_eq!(r, naive_root(&all));
            let index = (seed % size as u64) as usize;
            let proof = inclusion_proof(&tree, index as u64, size as u64).unwrap();
            prop_assert_eq!(&proof, &naive_path(index, &all));
            prop_assert_eq!(verify_inclusion(&all[index], index as u64, size as u64, &proof, &r), Ok(()));

            let old = 1 + (seed >> 32) as usize % size;
            let old_root = naive_root(&all[..old]);
            let cproof = consistency_proof(&tree, old as u64, size as u64).unwrap();
            prop_assert_eq!(&cproof, &naive_subproof(old, &all, true));
            prop_assert_eq!(verify_consistency(old as u64, size as u64, &old_root, &r, &cproof), Ok(()));
        }

        #[test]
        fn any_single_bit_change_is_rejected(size in 2usize..300, seed in any::<u64>(), bit in 0usize..256) {
            let all = leaves(size);
            let tree = MemoryTree::from_leaf_hashes(all.iter().copied());
            let r = tree.root();
            let index = (seed % size as u64) as usize;
            let proof = inclusion_proof(&tree, index as u64, size as u64).unwrap();
            let (i64_, s64) = (index as u64, size as u64);
            // Leaf, root, each proof element, the index and the size.
            prop_assert!(verify_inclusion(&flip(all[index], bit), i64_, s64, &proof, &r).is_err());
            prop_assert!(verify_inclusion(&all[index], i64_, s64, &proof, &flip(r, bit)).is_err());
            for j in 0..proof.len() {
                let mut bad = proof.clone();
                bad[j] = flip(bad[j], bit);
                prop_assert!(verify_inclusion(&all[index], i64_, s64, &bad, &r).is_err());
            }
            // A changed index or size is rejected unless the verifier would take exactly the
            // same hashing steps (then only the signed checkpoint binds the size).
            let b = bit % 64;
            let steps = inclusion_steps(i64_, s64, proof.len());
            for (i2, s2) in [(i64_ ^ (1 << b), s64), (i64_, s64 ^ (1 << b))] {
                if inclusion_steps(i2, s2, proof.len()) != steps || i2 != i64_ {
                    prop_assert!(verify_inclusion(&all[index], i2, s2, &proof, &r).is_err(), "index {} size {}", i2, s2);
                }
            }
            if !proof.is_empty() {
                prop_assert!(verify_inclusion(&all[index], i64_, s64, &proof[1..], &r).is_err());
            }

            let old = 1 + (seed >> 32) as usize % (size - 1);
            let old_root = naive_root(&all[..old]);
            let (o, n) = (old as u64, size as u64);
            let cproof = consistency_proof(&tree, o, n).unwrap();
            prop_assert!(verify_consistency(o, n, &flip(old_root, bit), &r, &cproof).is_err());
            prop_assert!(verify_consistency(o, n, &old_root, &flip(r, bit), &cproof).is_err());
            for j in 0..cproof.len() {
                let mut bad = cproof.clone();
                bad[j] = flip(bad[j], bit);
                prop_assert!(verify_consistency(o, n, &old_root, &r, &bad).is_err());
            }
            let csteps = consistency_steps(o, n, cproof.len());
            for (o2, n2) in [(o ^ (1 << b), n), (o, n ^ (1 << b))] {
                if consistency_steps(o2, n2, cproof.len()) != csteps {
                    prop_assert!(verify_consistency(o2, n2, &old_root, &r, &cproof).is_err(), "sizes {} {}", o2, n2);
                }
            }
        }
    }
}
