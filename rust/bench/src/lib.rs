//! Nothing to build: the benches live in `benches/` (`cargo bench -p fleetgate-bench`).
