"""The test suite's shape: which tests are LLM tests, the matrix, the preflight."""
