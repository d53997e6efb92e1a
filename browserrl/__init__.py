"""browserrl: GRPO for small LMs that use a web browser (MiniWoB++ through BrowserGym and OpenEnv)."""
