//! What the benchmarks share: [`workload::SyntheticEvents`], a seeded
//! stream of realistic mixed events for the criterion benches and
//! `edr-bench pipeline`.

pub mod workload;
