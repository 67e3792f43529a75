//! Criterion benches for the core's hot paths (no Redis): embedded decisions and parsing.

use criterion::{criterion_group, criterion_main, Criterion};
use fleetgate_core::duration::parse_go_duration;
use fleetgate_core::headers::RateLimitReport;
use fleetgate_core::{Algorithm, Limiter, LimiterOptions, QuotaOptions, QuotaSpec};
use std::hint::black_box;
use std::sync::Arc;

fn quota(name: &str, algorithm: Algorithm) -> Arc<QuotaSpec> {
    let opts = QuotaOptions {
        requests_per_minute: Some(i64::MAX / 2_000_000_000),
        tokens_per_minute: Some(1_000_000_000_000),
        algorithm,
        ..Default::default()
    };
    Arc::new(QuotaSpec::new(name, &opts).unwrap())
}

fn embedded(c: &mut Criterion) {
    let limiter = Limiter::new(None, LimiterOptions::default()).unwrap();
    let bucket = quota("gpt-4.1-mini", Algorithm::TokenBucket);
    let window = quota("gpt-4.1", Algorithm::SlidingWindow);
    let user = quota("user:42", Algorithm::TokenBucket);
    c.bench_function("embedded/token_bucket/1 quota", |b| {
        b.iter(|| limiter.try_acquire_embedded(black_box(&[&bucket]), 1, 100).unwrap().unwrap())
    });
    c.bench_function("embedded/token_bucket/2 quotas", |b| {
        b.iter(|| limiter.try_acquire_embedded(black_box(&[&bucket, &user]), 1, 100).unwrap().unwrap())
    });
    c.bench_function("embedded/sliding_window/1 quota", |b| {
        b.iter(|| {
            let d = limiter.try_acquire_embedded(black_box(&[&window]), 1, 100).unwrap().unwrap();
            // Give the admission back so the window log stays small.
            limiter.settle_local(d.reservation.as_ref().unwrap(), 0)
        })
    });
}

fn parsing(c: &mut Criterion) {
    c.bench_function("parse_go_duration/23h18m29.144s", |b| b.iter(|| parse_go_duration(black_box("23h18m29.144s"))));
    let headers = [
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-limit-tokens", "2000000"),
        ("x-ratelimit-remaining-tokens", "1999000"),
        ("x-ratelimit-reset-tokens", "30ms"),
    ];
    c.bench_function("RateLimitReport::from_headers", |b| b.iter(|| RateLimitReport::from_headers(black_box(headers))));
}

criterion_group!(benches, embedded, parsing);
criterion_main!(benches);
