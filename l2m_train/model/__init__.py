"""The LM2 model. It knows nothing of Lightning, DeepSpeed or SLURM."""
from l2m_train.model.decoder import DecoderOutput, DecoderState, MemoryDecoder

__all__ = ["DecoderOutput", "DecoderState", "MemoryDecoder"]
