//! Known-answer tests against published vectors (tests/vectors/, sources named in each file).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use promptledger::ledger::checkpoint::{parse_body, Checkpoint};
use promptledger::ledger::dsse::{self, Envelope};
use promptledger::ledger::keys::{KeyPair, PublicKey};
use promptledger::ledger::merkle::{self, Hash, MemoryTree, NodeId, NodeReader};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn hex32(v: &Value) -> Hash {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

/// Base64 (Go `[]byte` JSON) to a 32-byte hash; `None` for anything that is not 32 bytes, which
/// a SHA-256 verifier must refuse.
fn b64_32(v: &Value) -> Option<Hash> {
    STANDARD.decode(v.as_str()?).ok()?.try_into().ok()
}

fn b64_list(v: &Value) -> Option<Vec<Hash>> {
    match v {
        Value::Null => Some(vec![]),
        Value::Array(items) => items.iter().map(b64_32).collect(),
        _ => None,
    }
}

#[test]
fn manifest_hashes_match_the_copied_vectors() {
    let dir = format!("{}/tests/vectors", env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(format!("{dir}/MANIFEST.sha256")).unwrap();
    let mut checked = 0;
    for line in manifest.lines().filter(|l| !l.trim().is_empty()) {
        let (want, name) = line.split_once("  ").unwrap();
        let got = hex::encode(Sha256::digest(
            std::fs::read(format!("{dir}/{name}")).unwrap(),
        ));
        assert_eq!(got, want, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 13);
}

fn reference_leaves() -> Vec<Vec<u8>> {
    let v = load("merkle_rfc6962_reference_tree.json");
    v["leaf_inputs_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap())
        .collect()
}

fn reference_tree() -> MemoryTree {
    MemoryTree::from_leaf_hashes(reference_leaves().iter().map(|l| merkle::leaf_hash(l)))
}

#[test]
fn rfc6962_reference_tree_hashes_nodes_and_roots() {
    let v = load("merkle_rfc6962_reference_tree.json");
    for kat in v["hasher_kats"].as_array().unwrap() {
        let want = hex32(&kat["want"]);
        match kat["op"].as_str().unwrap() {
            "empty_root" => assert_eq!(merkle::empty_root(), want),
            "leaf_hash" => {
                let input = hex::decode(kat["input_hex"].as_str().unwrap()).unwrap();
                assert_eq!(merkle::leaf_hash(&input), want);
            }
            "node_hash" => {
                // Children of any length: check the definition directly.
                let l = hex::decode(kat["left_hex"].as_str().unwrap()).unwrap();
                let r = hex::decode(kat["right_hex"].as_str().unwrap()).unwrap();
                let got: Hash =
                    Sha256::digest([&[merkle::NODE_PREFIX][..], &l, &r].concat()).into();
                assert_eq!(got, want);
            }
            op => panic!("unknown op {op}"),
        }
    }
    let tree = reference_tree();
    for (level, row) in v["node_hashes_by_level_hex"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        for (index, want) in row.as_array().unwrap().iter().enumerate() {
            let id = NodeId {
                level: level as u8,
                index: index as u64,
            };
            assert_eq!(tree.node(id).unwrap(), hex32(want), "node {id:?}");
        }
    }
    for (size, want) in v["root_hashes_by_size_hex"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(
            merkle::root(&tree, size as u64).unwrap(),
            hex32(want),
            "root of size {size}"
        );
    }
}

#[test]
fn golden_proofs_are_generated_byte_for_byte_and_verify() {
    let v = load("merkle_golden_proofs.json");
    let roots = load("merkle_rfc6962_reference_tree.json")["root_hashes_by_size_hex"].clone();
    let tree = reference_tree();
    let leaves = reference_leaves();
    for case in v["inclusion"].as_array().unwrap() {
        let (index, size) = (
            case["leaf_index"].as_u64().unwrap(),
            case["tree_size"].as_u64().unwrap(),
        );
        let want: Vec<Hash> = case["proof_hex"]
            .as_array()
            .unwrap()
            .iter()
            .map(hex32)
            .collect();
        assert_eq!(
            merkle::inclusion_proof(&tree, index, size).unwrap(),
            want,
            "{case}"
        );
        let root = hex32(&roots[size as usize]);
        let leaf = merkle::leaf_hash(&leaves[index as usize]);
        assert_eq!(
            merkle::verify_inclusion(&leaf, index, size, &want, &root),
            Ok(())
        );
    }
    for case in v["consistency"].as_array().unwrap() {
        let (old, new) = (
            case["size1"].as_u64().unwrap(),
            case["size2"].as_u64().unwrap(),
        );
        let want: Vec<Hash> = case["proof_hex"]
            .as_array()
            .unwrap()
            .iter()
            .map(hex32)
            .collect();
        assert_eq!(
            merkle::consistency_proof(&tree, old, new).unwrap(),
            want,
            "{case}"
        );
        let (r1, r2) = (hex32(&roots[old as usize]), hex32(&roots[new as usize]));
        assert_eq!(
            merkle::verify_consistency(old, new, &r1, &r2, &want),
            Ok(())
        );
    }
}

#[test]
fn transparency_dev_inclusion_probes_accept_and_reject_as_published() {
    let v = load("merkle_inclusion_probes.json");
    let mut rejected = 0;
    for p in v["probes"].as_array().unwrap() {
        let want_err = p["wantErr"].as_bool().unwrap();
        let result = (|| {
            let leaf = b64_32(&p["leafHash"])?;
            let root = b64_32(&p["root"])?;
            let proof = b64_list(&p["proof"])?;
            let (index, size) = (p["leafIdx"].as_u64()?, p["treeSize"].as_u64()?);
            merkle::verify_inclusion(&leaf, index, size, &proof, &root).ok()
        })();
        assert_eq!(result.is_none(), want_err, "{}: {}", p["file"], p["desc"]);
        rejected += want_err as usize;
    }
    assert!(
        rejected > 50,
        "the must-reject mutations are exercised ({rejected})"
    );
}

#[test]
fn transparency_dev_consistency_probes_accept_and_reject_as_published() {
    let v = load("merkle_consistency_probes.json");
    let (mut rejected, mut not_sha256) = (0, 0);
    for p in v["probes"].as_array().unwrap() {
        let want_err = p["wantErr"].as_bool().unwrap();
        if !want_err && (b64_32(&p["root1"]).is_none() || b64_32(&p["root2"]).is_none()) {
            // Go's byte-slice verifier accepts equal toy roots of any length; a SHA-256 verifier
            // refuses hashes that are not 32 bytes before it gets that far.
            not_sha256 += 1;
            continue;
        }
        let result = (|| {
            let (r1, r2) = (b64_32(&p["root1"])?, b64_32(&p["root2"])?);
            let proof = b64_list(&p["proof"])?;
            let (s1, s2) = (p["size1"].as_u64()?, p["size2"].as_u64()?);
            merkle::verify_consistency(s1, s2, &r1, &r2, &proof).ok()
        })();
        assert_eq!(result.is_none(), want_err, "{}: {}", p["file"], p["desc"]);
        rejected += want_err as usize;
    }
    assert!(
        rejected > 50,
        "the must-reject mutations are exercised ({rejected})"
    );
    assert_eq!(
        not_sha256, 1,
        "only the toy-root equal-size probe is skipped"
    );
}

#[test]
fn cctv_trees_and_proofs_match() {
    let v = load("merkle_cctv_rgdd.json");
    let leaves: Vec<Hash> = v["merkle_tree"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let leaf = merkle::leaf_hash(n["leaf_data"].as_str().unwrap().as_bytes());
            assert_eq!(Some(leaf), b64_32(&n["leaf_hash"]));
            leaf
        })
        .collect();
    for (i, n) in v["merkle_tree"].as_array().unwrap().iter().enumerate() {
        let tree = MemoryTree::from_leaf_hashes(leaves[..=i].iter().copied());
        assert_eq!(
            Some(tree.root()),
            b64_32(&n["root_hash"]),
            "root of {} leaves",
            i + 1
        );
    }
    let tree = MemoryTree::from_leaf_hashes(leaves.iter().copied());
    let inclusion = |c: &Value| -> Option<()> {
        let (index, size) = (c["leaf_index"].as_u64()?, c["tree_size"].as_u64()?);
        let proof = b64_list(&c["inclusion_path"])?;
        merkle::verify_inclusion(
            &b64_32(&c["leaf_hash"])?,
            index,
            size,
            &proof,
            &b64_32(&c["root_hash"])?,
        )
        .ok()
    };
    for c in v["inclusion_valid"].as_array().unwrap() {
        assert!(inclusion(c).is_some(), "{c}");
        let (index, size) = (
            c["leaf_index"].as_u64().unwrap(),
            c["tree_size"].as_u64().unwrap(),
        );
        assert_eq!(
            Some(merkle::inclusion_proof(&tree, index, size).unwrap()),
            b64_list(&c["inclusion_path"])
        );
    }
    for c in v["inclusion_invalid"].as_array().unwrap() {
        assert!(inclusion(c).is_none(), "{c}");
    }
    let consistency = |c: &Value| -> Option<()> {
        let (old, new) = (c["old_size"].as_u64()?, c["new_size"].as_u64()?);
        let proof = b64_list(&c["consistency_path"])?;
        merkle::verify_consistency(
            old,
            new,
            &b64_32(&c["old_root"])?,
            &b64_32(&c["new_root"])?,
            &proof,
        )
        .ok()
    };
    for c in v["consistency_valid"].as_array().unwrap() {
        assert!(consistency(c).is_some(), "{c}");
        let (old, new) = (
            c["old_size"].as_u64().unwrap(),
            c["new_size"].as_u64().unwrap(),
        );
        assert_eq!(
            Some(merkle::consistency_proof(&tree, old, new).unwrap()),
            b64_list(&c["consistency_path"])
        );
    }
    for c in v["consistency_invalid"].as_array().unwrap() {
        assert!(consistency(c).is_none(), "{c}");
    }
}

#[test]
fn subtree_hashes_and_inclusion_accumulators_match() {
    let v = load("merkle_subtree_accumulated.json");
    let n = v["max_leaves"].as_u64().unwrap();
    let leaves: Vec<Hash> = (0..n).map(|i| merkle::leaf_hash(&[i as u8])).collect();
    let (mut hashes, mut inclusions) = (Sha256::new(), Sha256::new());
    for end in 0..=n {
        for start in 0..=end {
            let valid =
                start == 0 || start == end || start % (end - start).next_power_of_two() == 0;
            if !valid {
                continue;
            }
            let sub =
                MemoryTree::from_leaf_hashes(leaves[start as usize..end as usize].iter().copied());
            hashes.update(format!("[{start}, {end}) {}\n", hex::encode(sub.root())));
            for index in start..end {
                let proof = merkle::inclusion_proof(&sub, index - start, end - start).unwrap();
                let mut line = format!("{index} [{start}, {end})");
                for p in proof {
                    line.push(' ');
                    line.push_str(&hex::encode(p));
                }
                line.push('\n');
                inclusions.update(line);
            }
        }
    }
    assert_eq!(
        hex::encode(hashes.finalize()),
        v["subtree_hash"]["want_sha256"].as_str().unwrap()
    );
    assert_eq!(
        hex::encode(inclusions.finalize()),
        v["subtree_inclusion"]["want_sha256"].as_str().unwrap()
    );
}

#[test]
fn ed25519_rfc8032_section_7_1() {
    let v = load("ed25519_rfc8032.json");
    for case in v["valid"].as_array().unwrap() {
        let seed: [u8; 32] = hex::decode(case["secret_seed_hex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let pair = KeyPair::from_seed("k", &seed).unwrap();
        let public = pair.public();
        assert_eq!(
            hex::encode(public.verifying_key().as_bytes()),
            case["public_key_hex"].as_str().unwrap()
        );
        let msg = hex::decode(case["message_hex"].as_str().unwrap()).unwrap();
        let sig = pair.signing_key().sign(&msg);
        assert_eq!(
            hex::encode(sig.to_bytes()),
            case["signature_hex"].as_str().unwrap(),
            "{}",
            case["name"]
        );
        assert!(public.verifying_key().verify_strict(&msg, &sig).is_ok());
    }
    for case in v["invalid"].as_array().unwrap() {
        let key = VerifyingKey::from_bytes(
            &hex::decode(case["public_key_hex"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let msg = hex::decode(case["msg_hex"].as_str().unwrap()).unwrap();
        let sig = hex::decode(case["sig_hex"].as_str().unwrap()).unwrap();
        let ok = key.is_ok_and(|k| {
            Signature::from_slice(&sig).is_ok_and(|s| k.verify_strict(&msg, &s).is_ok())
        });
        assert!(!ok, "{}", case["desc"]);
    }
}

/// The verification the ledger uses for actor signatures ([`Envelope::verify_all`] and the
/// verifier's fallback) is `verify_strict`; Wycheproof says which signatures it must refuse.
#[test]
fn ed25519_wycheproof_strict_verification() {
    let v = load("ed25519_wycheproof.json");
    let mut count = 0;
    for group in v["data"]["testGroups"].as_array().unwrap() {
        let pk = hex::decode(group["publicKey"]["pk"].as_str().unwrap()).unwrap();
        let key = pk
            .try_into()
            .ok()
            .and_then(|b: [u8; 32]| VerifyingKey::from_bytes(&b).ok());
        for t in group["tests"].as_array().unwrap() {
            let msg = hex::decode(t["msg"].as_str().unwrap()).unwrap();
            let sig = hex::decode(t["sig"].as_str().unwrap()).unwrap();
            let ok = key.is_some_and(|k| {
                Signature::from_slice(&sig).is_ok_and(|s| k.verify_strict(&msg, &s).is_ok())
            });
            assert_eq!(
                ok,
                t["result"] == "valid",
                "tcId {} {}",
                t["tcId"],
                t["comment"]
            );
            count += 1;
        }
    }
    assert_eq!(count, v["data"]["numberOfTests"].as_u64().unwrap());
}

#[test]
fn dsse_vectors_pae_and_verification() {
    let example = load("dsse_protocol_example.json");
    assert_eq!(
        dsse::pae(
            example["payload_type"].as_str().unwrap(),
            example["serialized_body_utf8"].as_str().unwrap().as_bytes()
        ),
        example["expected_pae_utf8"].as_str().unwrap().as_bytes()
    );
    let v = load("dsse_testvectors.json")["data"].clone();
    let key = |name: &str| -> VerifyingKey {
        let seed: [u8; 32] = hex::decode(v["keys"][name]["seed"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let k = SigningKey::from_bytes(&seed).verifying_key();
        assert_eq!(
            hex::encode(k.as_bytes()),
            v["keys"][name]["public"].as_str().unwrap()
        );
        k
    };
    for case in v["vectors"].as_array().unwrap() {
        let env = Envelope::from_json(case["envelope"].to_string().as_bytes()).unwrap();
        if case["expect"] == "accept" {
            // `pae` is what the signatures cover; a swapped payload type changes it (and fails).
            assert_eq!(
                hex::encode(env.pae()),
                case["pae"].as_str().unwrap(),
                "{}",
                case["id"]
            );
        }
        let trusted: Vec<(String, VerifyingKey)> = case["trustedKeys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n.as_str().unwrap().to_owned(), key(n.as_str().unwrap())))
            .collect();
        let supported = case["supportedPayloadTypes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == &env.payload_type);
        let threshold = case["threshold"].as_u64().unwrap() as usize;
        let accepted = supported && dsse::verify_threshold(&env, &trusted, threshold).is_ok();
        assert_eq!(
            accepted,
            case["expect"] == "accept",
            "{}: {}",
            case["id"],
            case["description"]
        );
    }
}

#[test]
fn signed_note_keys_signing_and_opening() {
    let v = load("signed_note_vectors.json");
    for k in v["verifier_keys"].as_array().unwrap() {
        let parsed = PublicKey::from_vkey(k["vkey"].as_str().unwrap());
        assert_eq!(
            parsed.is_ok(),
            k["valid"].as_bool().unwrap(),
            "{}",
            k["vkey"]
        );
        if let Ok(p) = parsed {
            assert_eq!(
                p.key_id().as_str(),
                format!(
                    "{}+{}",
                    k["name"].as_str().unwrap(),
                    k["key_id"].as_str().unwrap()
                )
            );
            assert_eq!(p.to_vkey(), k["vkey"].as_str().unwrap());
        }
    }
    // Mutation rules: every proper substring and every one-byte increment must be refused.
    let vkey = v["vkey_mutation_rule"]["vkey"].as_str().unwrap();
    for i in 0..vkey.len() {
        for j in i..=vkey.len() {
            if (i, j) != (0, vkey.len()) {
                assert!(
                    PublicKey::from_vkey(&vkey[i..j]).is_err(),
                    "substring {i}..{j}"
                );
            }
        }
        let mut bumped = vkey.as_bytes().to_vec();
        bumped[i] = bumped[i].wrapping_add(1);
        if let Ok(s) = String::from_utf8(bumped) {
            assert!(PublicKey::from_vkey(&s).is_err(), "byte {i} incremented");
        }
    }
    let skey = v["skey_mutation_rule"]["skey"].as_str().unwrap();
    for i in 0..skey.len() {
        for j in i..=skey.len() {
            if (i, j) != (0, skey.len()) {
                assert!(
                    KeyPair::from_skey(&skey[i..j]).is_err(),
                    "substring {i}..{j}"
                );
            }
        }
        let mut bumped = skey.as_bytes().to_vec();
        bumped[i] = bumped[i].wrapping_add(1);
        if let Ok(s) = String::from_utf8(bumped) {
            assert!(KeyPair::from_skey(&s).is_err(), "byte {i} incremented");
        }
    }
    for s in v["signer_keys"].as_array().unwrap() {
        let pair = KeyPair::from_skey(s["skey"].as_str().unwrap()).unwrap();
        assert_eq!(
            pair.public().to_vkey(),
            s["matching_vkey"].as_str().unwrap()
        );
    }
    // Deterministic signing of a note: what checkpoints use.
    for case in v["sign"].as_array().unwrap() {
        let pair = KeyPair::from_skey(case["skey"].as_str().unwrap()).unwrap();
        let mut note =
            signed_note::Note::new(case["text"].as_str().unwrap().as_bytes(), &[]).unwrap();
        note.add_sigs(&[&signed_note::StandardSigner::new(&pair.to_skey()).unwrap()])
            .unwrap();
        assert_eq!(
            note.to_bytes(),
            case["want_msg"].as_str().unwrap().as_bytes()
        );
    }
    for case in v["open"].as_array().unwrap() {
        let msg = STANDARD.decode(case["msg_b64"].as_str().unwrap()).unwrap();
        let verifiers: Vec<Box<dyn signed_note::Verifier>> = case["verifiers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                Box::new(signed_note::StandardVerifier::new(k.as_str().unwrap()).unwrap())
                    as Box<dyn signed_note::Verifier>
            })
            .collect();
        let list = signed_note::VerifierList::new(verifiers);
        let outcome = match signed_note::Note::from_bytes(&msg) {
            Err(_) => "malformed".to_owned(),
            Ok(note) => match note.verify(&list) {
                Ok((verified, _)) if verified.is_empty() => "no_verifiable_signatures".into(),
                Ok(_) => "ok".into(),
                Err(signed_note::NoteError::InvalidSignature { .. }) => "invalid_signature".into(),
                Err(signed_note::NoteError::VerificationError(
                    signed_note::VerificationError::AmbiguousKey { .. },
                )) => "ambiguous_key".into(),
                Err(signed_note::NoteError::UnverifiedNote) => "no_verifiable_signatures".into(),
                Err(e) => format!("other: {e}"),
            },
        };
        assert_eq!(
            outcome,
            case["expect"].as_str().unwrap(),
            "{}",
            case["desc"]
        );
    }
}

#[test]
fn checkpoint_bodies_parse_as_published() {
    let v = load("checkpoint_body_vectors.json");
    for case in v["cases"].as_array().unwrap() {
        let body = case["body"].as_str().unwrap();
        let parsed = parse_body(body);
        assert_eq!(
            parsed.is_ok(),
            case["valid"].as_bool().unwrap(),
            "{}",
            case["desc"]
        );
        if let Ok(p) = parsed {
            assert_eq!(p.origin, case["origin"].as_str().unwrap());
            assert_eq!(p.size, case["size"].as_u64().unwrap());
            assert_eq!(
                STANDARD.encode(&p.root),
                case["root_hash_b64"].as_str().unwrap()
            );
            assert_eq!(p.rest, case["rest"].as_str().unwrap());
            if p.rest.is_empty() && p.root.len() == 32 {
                let cp = Checkpoint::from_body(body).unwrap();
                assert_eq!(cp.body(), body, "marshal reproduces {}", case["desc"]);
            }
        }
    }
}

/// The write path's batched verification must accept exactly what `verify_strict` accepts.
#[test]
fn batched_verification_agrees_with_strict_on_wycheproof() {
    use promptledger::sigbatch::{verify_many, SigItem};
    let v = load("ed25519_wycheproof.json");
    let mut items = Vec::new();
    let mut want = Vec::new();
    for group in v["data"]["testGroups"].as_array().unwrap() {
        let pk = hex::decode(group["publicKey"]["pk"].as_str().unwrap()).unwrap();
        let Some(key) = pk
            .try_into()
            .ok()
            .and_then(|b: [u8; 32]| VerifyingKey::from_bytes(&b).ok())
        else {
            continue;
        };
        for t in group["tests"].as_array().unwrap() {
            let message = hex::decode(t["msg"].as_str().unwrap()).unwrap();
            let Ok(signature) =
                Signature::from_slice(&hex::decode(t["sig"].as_str().unwrap()).unwrap())
            else {
                continue;
            };
            want.push(key.verify_strict(&message, &signature).is_ok());
            items.push(SigItem {
                message,
                signature,
                key,
            });
        }
    }
    assert!(items.len() > 100 && want.iter().any(|w| !w));
    // Mixed batches (valid and invalid together) and single-item batches.
    assert_eq!(verify_many(&items), want);
    for (item, w) in items.iter().zip(&want) {
        assert_eq!(verify_many(std::slice::from_ref(item)), vec![*w]);
    }
    // A batch of only valid signatures takes the batch path.
    let valid: Vec<SigItem> = items
        .iter()
        .zip(&want)
        .filter(|(_, w)| **w)
        .map(|(i, _)| i.clone())
        .collect();
    assert!(verify_many(&valid).iter().all(|ok| *ok));
}
