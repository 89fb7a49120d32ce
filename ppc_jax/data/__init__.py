"""Data side: VOC tree reader, synthetic VOC generator, training and inference inputs.

  voc_meta       class lists (ClassList; VOC's by default), palette, ImageNet statistics
  voc            VOCdevkit/VOC2012 reader: lists, ids, labels, validation (DataError, BadInputLog)
  synth          `python -m ppc_jax.data.synth --out DIR`: a synthetic VOC-format tree
  make_cls_labels `python -m ppc_jax.data.make_cls_labels --voc_root R`: writes cls_labels.npy
  augment        the reference augmentation (PIL stage + TF ops, align-corners resize)
  pipeline       dual-view tf.data training input: sharded, deterministic, resumable
  infer_inputs   multi-scale + flip inference inputs of one image

Modules import TensorFlow only where needed (augment, pipeline), so inference and evaluation
code can use voc / infer_inputs without it.
"""
