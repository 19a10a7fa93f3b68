"""The inference-I/O layer: what a model is given and what it answers, in numpy and Pillow only.

`predict` (the CLI) and `serve` (the `/predict` endpoint) both use it, so a file means the same thing to both:

- `kinds`: which kind of input a file name, a media type or a body's first bytes say it is;
- `types`: `Source` (something to read), `Sample` (one model input), `Problem` (why an input failed) and
  `ModelInput` (the model's input as its manifest describes it);
- `decode`: sources -> model-ready samples and batches, with the manifest's preprocessing
  (`maasctl.preprocess`, the contract with training);
- `uploads`: the parts of an HTTP upload -> sources (no HTTP objects: the transport parses the request);
- `outputs`: which output holds the scores, and scores -> labelled predictions.

Submodules are imported on demand: `maasctl predict` starts in a quarter of a second and this layer is on its path.
"""
