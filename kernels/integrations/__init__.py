"""The kernels inside models users run, without changing the model's code or weights:

- :mod:`gpuos.kernels.integrations.dit`: diffusers attention processors running radial
  attention or SLA in a diffusion transformer's self-attention;
- :mod:`gpuos.kernels.integrations.llama`: vAttention decoding in a Hugging Face Llama model,
  over :mod:`gpuos.kernels.integrations.paged_cache`.

Neither module imports diffusers or transformers itself; they work on the objects a user passes.
"""
