"""An agent whose one tool is a remote Roost agent over A2A (`REMOTE_A2A_URL`)."""

import os

from roost import Agent
from roost.tools.a2a import A2AAgentTool

caller = Agent(
    name="caller", model="demo", description="Asks the remote weather agent.",
    tools=[A2AAgentTool(os.environ["REMOTE_A2A_URL"], name="ask_weather",
                        description="Ask the remote weather agent a question.")])
