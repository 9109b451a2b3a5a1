// The home page's empty state: the composer posts the first prompt to /c/new, which creates the
// conversation and starts the prompt there.
import { Composer } from "./composer.js";

const form = document.querySelector("[data-composer]");
if (form) new Composer(form);
