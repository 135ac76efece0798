"""KV-cache compression: quantized caches, StreamingLLM sinks + window, H2O heavy hitters.

``cache`` holds the policies on transformers' Cache API, ``quant`` the key/value codes,
``stream`` the decode-through-cache evaluation and ``passkey`` the retrieval probe.
The recipe steps that choose a policy are in core/methods/kv.py.
"""
