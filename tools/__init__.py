"""Tools of a source checkout: the benchmarks and the tests' LLM stub. Not part of the installed
distribution, not in the Docker image (`rapport bench` imports them from the checkout)."""
