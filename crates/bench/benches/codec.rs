//! Micro benchmarks: pgoutput decoding throughput (bytes/s of a realistic
//! Begin/Insert/Update/Commit stream) and key derivation (keys/s through
//! `images_from_pgoutput` and `derive`).
#![allow(missing_docs)]

use std::hint::black_box;

use cm_bench::{item_relation, item_table, synthetic_stream};
use cm_keys::{derive, images_from_pgoutput, ChangeKind, KeySpace, RowImages};
use cm_pgoutput::{Decoder, LogicalMessage};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const TRANSACTIONS: u64 = 100;
const ROWS_PER_TXN: u64 = 100;

fn decode(c: &mut Criterion) {
    let stream = synthetic_stream(TRANSACTIONS, ROWS_PER_TXN);
    let bytes: usize = stream.iter().map(|p| p.len()).sum();
    let mut group = c.benchmark_group("pgoutput");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("decode_stream", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new();
            for payload in &stream {
                match decoder.decode(payload.clone()) {
                    Ok(message) => {
                        black_box(message);
                    }
                    Err(e) => panic!("synthetic stream does not decode: {e}"),
                }
            }
        });
    });
    group.finish();
}

/// The (kind, images) of every change in the synthetic stream.
fn changes() -> Vec<(ChangeKind, RowImages)> {
    let relation = item_relation();
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    for payload in synthetic_stream(TRANSACTIONS, ROWS_PER_TXN) {
        let images = match decoder.decode(payload) {
            Ok(LogicalMessage::Insert(m)) => (
                ChangeKind::Insert,
                images_from_pgoutput(&relation, ChangeKind::Insert, None, Some(&m.new)),
            ),
            Ok(LogicalMessage::Update(m)) => (
                ChangeKind::Update,
                images_from_pgoutput(&relation, ChangeKind::Update, m.old.as_ref(), Some(&m.new)),
            ),
            Ok(_) => continue,
            Err(e) => panic!("synthetic stream does not decode: {e}"),
        };
        match images {
            (kind, Ok(images)) => out.push((kind, images)),
            (_, Err(e)) => panic!("synthetic images: {e}"),
        }
    }
    out
}

fn keys(c: &mut Criterion) {
    let space = match KeySpace::new("bench") {
        Ok(space) => space,
        Err(e) => panic!("key space: {e}"),
    };
    let table = item_table();
    let changes = changes();
    let keys_per_pass: usize = changes
        .iter()
        .map(|(kind, images)| {
            derive(
                &space,
                &table,
                *kind,
                images.old.as_ref(),
                images.new.as_ref(),
            )
            .flush_keys()
            .len()
        })
        .sum();
    let mut group = c.benchmark_group("keys");
    group.sample_size(10);
    group.throughput(Throughput::Elements(keys_per_pass as u64));
    group.bench_function("derive", |b| {
        b.iter(|| {
            for (kind, images) in &changes {
                black_box(derive(
                    &space,
                    &table,
                    *kind,
                    images.old.as_ref(),
                    images.new.as_ref(),
                ));
            }
        });
    });
    // The invalidator's whole per-change path: decode, images, derive.
    let stream = synthetic_stream(TRANSACTIONS, ROWS_PER_TXN);
    let relation = item_relation();
    group.bench_function("decode_images_derive", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new();
            for payload in &stream {
                let (kind, old, new) = match decoder.decode(payload.clone()) {
                    Ok(LogicalMessage::Insert(m)) => (ChangeKind::Insert, None, m.new),
                    Ok(LogicalMessage::Update(m)) => (ChangeKind::Update, m.old, m.new),
                    Ok(_) => continue,
                    Err(e) => panic!("synthetic stream does not decode: {e}"),
                };
                match images_from_pgoutput(&relation, kind, old.as_ref(), Some(&new)) {
                    Ok(images) => {
                        black_box(derive(
                            &space,
                            &table,
                            kind,
                            images.old.as_ref(),
                            images.new.as_ref(),
                        ));
                    }
                    Err(e) => panic!("synthetic images: {e}"),
                }
            }
        });
    });
    group.finish();
}

criterion_group!(benches, decode, keys);
criterion_main!(benches);
