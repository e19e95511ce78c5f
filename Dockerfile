# Training image: PyTorch with the CUDA runtime, plus this package; torchrun is the entrypoint.
#   docker build -t dreg-dist .
#   docker run --gpus all --ipc=host -v "$PWD/runs:/workspace/runs" -v /data:/workspace/data dreg-dist \
#       --standalone --nproc_per_node=8 launch/train.py --config configs/quickstart.yaml
# Multi-node: run one container per node with torchrun's --nnodes/--rdzv_* arguments
# (see launch/slurm/train.sbatch for the values).
# PyTorch >= 2.9 so torchrun can forward Slurm's SIGUSR1 preemption warning to the workers.
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /workspace
COPY setup.cfg pyproject.toml README.md ./
COPY dreg_dist ./dreg_dist
COPY launch ./launch
COPY configs ./configs

# Keep the image's torch (and its CUDA build): pip may add dependencies but not replace it.
RUN python -c "import torch; print('torch==' + torch.__version__)" > /tmp/constraints.txt \
    && pip install --constraint /tmp/constraints.txt . \
    && python -c "import dreg_dist, torchvision; print('dreg_dist', dreg_dist.__file__)"

ENTRYPOINT ["torchrun"]
CMD ["--standalone", "--nproc_per_node=1", "launch/train.py", "--config", "configs/quickstart.yaml"]
