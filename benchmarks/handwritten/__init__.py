"""The seed's models written by hand as idiomatic Flax NNX: the limit for what porter emits.

Each module holds one model, computing the same function as its torch
original in fixtures/models/ (same input and output layout), and
`load_torch_weights(model, state_dict)`, which copies a torch state_dict into
it with plain numpy (these files do not use porter). `tests/test_handwritten.py`
checks each against porter's conversion on the same weights.
"""
