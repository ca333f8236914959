"""The lab: network namespaces, swtpms, chains and clock simulators put together for the demo,
the benchmarks and the integration tests. It sits at the top of the import graph: nothing in
the product imports it."""
