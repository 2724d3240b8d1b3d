"""Small pieces every part of the toolkit shares: atomic file writes, log set-up, image sizes.

Nothing here imports TensorFlow or Keras, so data/, nets/, eval/, deploy/ and the scripts can all use it.
"""
