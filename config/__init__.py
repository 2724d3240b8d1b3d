"""The shared `class Args` behaviour of every script, and the one entry helper every script's main block calls.

* `config.fields`: the field rules (`Range`, `Choices`, `Length`, `ImageSize`, the path types) and `Config`, the base
  of every `class Args`: typed defaults, strict ``--key=value`` overrides, the ``args.json`` round trip.
* `config.cli`: `run_script(Args, main)`, ``--help``, one line and an exit code for an expected error.
* `config.tensorflow_log`: quiets TensorFlow's C++ start-up log; importing `config` installs it for a script, so a
  script imports config before anything that loads TensorFlow.
* `config.program`: which program is running (a script by path, ``python -m``, a console script).

Nothing here imports TensorFlow or Keras.
"""

# config.cli imports config.tensorflow_log, whose import quiets TensorFlow when a script is running.
from config.cli import help_text, run_script
from config.fields import (Choices, Config, ImageSize, ImageSizeOrNetwork, Length, NonNegativeInt, OptionalPath,
                           PositiveFloat, PositiveInt, Range, RequiredPath, registered_backbones)

__all__ = ["Choices", "Config", "ImageSize", "ImageSizeOrNetwork", "Length", "NonNegativeInt", "OptionalPath",
           "PositiveFloat", "PositiveInt", "Range", "RequiredPath", "help_text", "registered_backbones",
           "run_script"]
