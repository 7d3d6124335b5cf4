"""Ray actors: thin `@ray.remote` shells around plain classes (policy, reference, reward, critic, rollout).

Import the submodule you need (`llama_rlhf.actors.rollout`, `llama_rlhf.actors.weight_sync`); this
package imports nothing heavy so that `import llama_rlhf.actors.weight_sync` stays cheap.
"""
