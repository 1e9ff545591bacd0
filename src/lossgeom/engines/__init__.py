"""The shared floor's generation engines: one interface (:class:`.engine.Engine`) that turns prompts into
text and scores continuations, with three backends (:func:`.backends.open_engine`): Hugging Face
``generate`` (:mod:`.hf`), vLLM (:mod:`.vllm_engine`) and any OpenAI-compatible endpoint as a rollout
teacher (:mod:`.openai_api`); adapters applied to a model (:mod:`.adapters`). The rollouts, training,
evaluation and connectivity stages use them; they import only the ground floor and :mod:`lossgeom.lora`.
"""
