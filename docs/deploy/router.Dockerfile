# vLLM's router (a Rust binary in a Python wheel) as a container image.
#   docker build -f docs/deploy/router.Dockerfile -t vllm-router:0.1.17 docs/deploy
FROM python:3.12-slim
RUN pip install --no-cache-dir vllm-router==0.1.17
ENTRYPOINT ["vllm-router"]
