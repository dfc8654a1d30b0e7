"""Data layer: built-in benchmark, published annotation formats, video decoding, the uint8 cache, the prepared
videos (``prepare_videos``, ``manifest``, ``packed``) and the Dataset that training reads (docs/method.md §8-§10)."""
