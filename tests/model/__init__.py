"""The stateful property test: the stores against a reference model of the contract."""
