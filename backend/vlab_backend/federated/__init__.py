"""Federated learning (TYPE4), orchestrated by the server as dAIEdge describes it.

`config` validates the dAIEdge client's `fl_config`; `events` turns scripted client events
into each round's plan (and models batteries); `objectives` ends experiments; `weights` moves
ONNX initializers in and out of models and scores outputs; `flower` runs Flower's FedAvg in
its own cached environment; `orchestrator` drives each experiment's rounds, with TYPE3
(train) and TYPE2 (evaluate) benchmarks on the clients' targets.
"""
