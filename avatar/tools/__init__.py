"""Command-line tools beside the product: the test client, benchmarks, the soak test, knowledge evaluation."""
