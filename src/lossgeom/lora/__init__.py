"""The shared floor's LoRA maths: PEFT adapter directories read into float64 factors and checked
(:mod:`.adapters`), and the low-rank linear algebra that never forms a dense delta (:mod:`.lowrank`).
The geometry stage and the engines use them; they import only the ground floor.
"""
