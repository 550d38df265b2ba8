"""grpokit's vLLM server (`grpokit vllm-serve MODEL`): `app.py` runs inside the vLLM environment.

`app.py` imports only vLLM, FastAPI, uvicorn, torch and safetensors — never grpokit — because vLLM
usually lives in its own environment (it pins torch and transformers). It is started as a script
by path; this folder holds no module whose name could shadow the standard library.
"""
