//! Protects the instance choice of the data path (`Upstream::pick`, then `acquire`'s in-flight
//! slot): power of two choices on requests in flight (the default) against weighted round robin.
//!
//! Choice protected: two weighted random draws from a per-thread xorshift state and two relaxed
//! loads of in-flight counts (p2c), or one relaxed `fetch_add` on the target's cursor (round
//! robin); no lock, no allocation, independent of the instance count. Naive baseline: the
//! least-loaded instance by a full scan under a `Mutex` (what "least connections" is often first
//! written as), which is O(instances) and serialises every request of a target on one lock.
//! Contract (issue 14): the choice allocates nothing (checked with a counting allocator before
//! measuring; the bench panics otherwise), for either policy, with weights and with a drained
//! instance in the pool.

use std::hint::black_box;
use std::sync::Mutex;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use flipgate::config::Target;
use flipgate::upstream::balance::{Lb, Pick};
use flipgate::upstream::Upstream;

#[path = "support/alloc_count.rs"]
mod alloc_count;

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

/// A target of `n` instances, every third of weight 2, with `lb`.
fn target(n: usize, lb: Lb) -> Target {
    Target {
        name: "blue".into(),
        instances: (0..n)
            .map(|i| format!("10.0.0.{}:3000", i + 1).parse().unwrap())
            .collect(),
        weights: (0..n).map(|i| if i % 3 == 0 { 2 } else { 1 }).collect(),
        lb,
        tls: false,
        http2: false,
        sni: None,
        ca: None,
        health_check: None,
    }
}

/// One request's choice: pick, take the in-flight slot, give it back.
#[inline]
fn choose(u: &Upstream) -> usize {
    match u.pick(0, None) {
        Pick::Instance(i) => {
            let slot = u.acquire(i, 0).expect("unlimited");
            drop(black_box(slot));
            i
        }
        other => panic!("{other:?}"),
    }
}

/// The naive baseline: the least-loaded instance by a scan under a lock.
struct Naive {
    inflight: Mutex<Vec<usize>>,
}

impl Naive {
    fn choose(&self) -> usize {
        let mut v = self.inflight.lock().unwrap();
        let (i, _) = v.iter().enumerate().min_by_key(|(_, n)| **n).unwrap();
        v[i] += 1;
        v[i] -= 1;
        i
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("instance_choice");
    for n in [3usize, 16, 128] {
        for lb in [Lb::P2c, Lb::RoundRobin] {
            let u = Upstream::new(&target(n, lb), None);
            // Some load, and one drained instance, as in a rolling deploy.
            let held: Vec<_> = (0..n).map(|i| u.acquire(i, 0).unwrap()).collect();
            u.set_drained(n / 2, true);
            let (allocs, _) = alloc_count::allocations(|| {
                for _ in 0..10_000 {
                    black_box(choose(&u));
                }
            });
            assert_eq!(allocs, 0, "{lb:?} over {n} instances allocated");
            g.bench_with_input(BenchmarkId::new(lb.as_str(), n), &u, |b, u| {
                b.iter(|| choose(black_box(u)))
            });
            drop(held);
        }
        let naive = Naive {
            inflight: Mutex::new(vec![0; n]),
        };
        g.bench_with_input(BenchmarkId::new("naive_locked_scan", n), &naive, |b, x| {
            b.iter(|| x.choose())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
