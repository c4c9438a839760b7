"""The test harness: real nodes on their own loopback addresses, the metadata trees they
run from, load, and the test doubles (each named as such) where no real program can be
had here. The tests and the benchmarks in bench/ are built on it."""
