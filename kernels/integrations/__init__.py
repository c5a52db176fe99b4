"""The built-in kernels inside model code: attention processors for diffusers-style video
transformers (:mod:`.dit`) and a paged vAttention decode for Hugging Face-style Llama attention
(:mod:`.llama`, over the cache in :mod:`.paged_cache`). Neither diffusers nor transformers is
imported: the modules follow their call contracts, so gpuos does not depend on them.

Usage: docs/kernels/README.md.
"""
