"""Open Inference Protocol (KServe v2) types and codecs, independent of HTTP and of the model runtime."""
