"""On-device training (TYPE3) on a host CPU with onnxruntime-training.

The training engine, `onnxruntime-training-cpu` 1.19.2 with `onnx` 1.17.0, is heavy (about
300 MB) and frozen at ONNX IR 10 / opset 21: it lives in its own virtual environment, made
once per host by the `host-cpu` target's build step (see `targets/host-cpu/AI_Build`), never
in the client's or the server's install. Around it, in the lab's own interpreter:

- `tensors`: the ODT config checked against the model's inputs and outputs at submission;
- `prepare`: the user's model made trainable (support step): down-converted to what the engine
  reads, a trailing Softmax cut for cross-entropy, the batch dimension made free, the trainable
  initializers chosen, the learning parameters validated;
- `ort_train`: the trainer itself, a standalone script run *in the training environment*
  (build step: training artifacts; manager step: the epochs and the export);
- `report`: the trained model finished (the Softmax put back) and checked with the lab's
  onnxruntime, and `report_odt.json` written (manager step).

`python -m vlab_backend.training prepare|finish` are the target's entry points.
"""

from __future__ import annotations

# The training environment: its name under the cache directory and what is installed there.
TRAINING_ENV_NAME = "ort-training-1.19.2"
TRAINING_REQUIREMENTS = ("onnxruntime-training-cpu==1.19.2", "onnx==1.17.0")
TRAIN_ENGINE = "onnxruntime"
# What the training engine reads: ONNX opset and IR versions a model is down-converted to when
# it was saved with newer ones (onnx 1.17 checks IR <= 10; 17/8 is the tested pair).
TRAINING_OPSET = 17
TRAINING_IR_VERSION = 8
# Learning parameters beyond the dAIEdge `batch_size` and `epochs`, with their defaults.
OPTIMIZERS = ("adamw", "sgd")
LOSSES = ("cross_entropy", "mse")
DEFAULT_LEARNING_RATE = 0.01
DEFAULT_OPTIMIZER = "adamw"
DEFAULT_SHUFFLE = True
DEFAULT_SEED = 0
